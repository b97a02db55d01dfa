"""The server on the real embedded model (SmolLM2-135M-Instruct) with a LoRA adapter, through
the `openai` client: base and adapter by name, plain and streamed, prompts as in training.

Run with: pytest -m e2e tests/e2e/test_serve_embedded.py (about 10 s once the model is cached).
"""

from __future__ import annotations

import openai
import pytest
import torch

from domaintune.config.methods import LoraOptions
from domaintune.methods.base import get_method
from domaintune.models.decode import SamplingParams, generate
from domaintune.models.load import load_model
from domaintune.serve import ServeOptions, build_app, load_served, serve_in_thread

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(embedded_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    method = get_method("lora")
    model = method.apply(load_model("embedded"), LoraOptions(r=4, target_modules=["q_proj", "v_proj"], dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    run = tmp_path_factory.mktemp("support_run")
    method.save(model, run / "adapter")
    return load_served("embedded", {"support": run})


def direct(served, name, messages, max_tokens):
    prompt = served.codec.chat_prompt(messages)
    with served.activate(name) as model:
        ids = generate(model, [prompt], SamplingParams(max_tokens, stop_ids=served.codec.stop_ids),
                       served.codec.pad_id)[0].token_ids
    stream = served.codec.stream()
    return "".join(stream.push(i) for i in ids) + stream.flush()


def test_prompt_tokens_are_the_training_tokens(served):
    answer = {"role": "assistant", "content": "Paris."}
    prompt = served.codec.chat_prompt(QUESTION)
    ids, trained = served.template.encode([*QUESTION, answer], served.tokenizer)
    assert ids[:len(prompt)] == prompt and trained.index(True) == len(prompt)


def test_openai_client_plain_and_streaming_with_the_adapter_by_name(served):
    with serve_in_thread(build_app(served, ServeOptions())) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["embedded", "support"]
        base = client.chat.completions.create(model="embedded", messages=QUESTION, max_tokens=24, temperature=0)
        assert "Paris" in base.choices[0].message.content
        tuned = client.chat.completions.create(model="support", messages=QUESTION, max_tokens=24, temperature=0)
        assert tuned.choices[0].message.content == direct(served, "support", QUESTION, 24)
        assert tuned.choices[0].message.content != base.choices[0].message.content
        stream = client.chat.completions.create(model="support", messages=QUESTION, max_tokens=24, temperature=0,
                                                stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == tuned.choices[0].message.content
