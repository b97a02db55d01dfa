"""The real embedded model (SmolLM2-135M-Instruct): converts once, loads warm, templates match.

Run with: pytest -m e2e tests/e2e/test_embedded_model.py (the first run converts, ~30 s).
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from domaintune.models.load import load_model, load_tokenizer, resolve_model
from domaintune.models.templates import get_template

pytestmark = pytest.mark.e2e

CONV = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    return load_tokenizer("embedded")


def test_embedded_resolves_to_a_cached_plain_folder(embedded_model_dir):
    assert resolve_model() == embedded_model_dir  # second call: the cache, no conversion
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    source = json.loads((embedded_model_dir / "domaintune-source.json").read_text())
    assert source["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(source["sha256"]) == 64


def test_warm_load_is_fast(embedded_model_dir):
    start = time.perf_counter()
    load_tokenizer(), load_model()
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("conv", [CONV, [{"role": "system", "content": "Be brief."}, *CONV]])
def test_auto_template_matches_the_tokenizers_own(tokenizer, conv):
    template = get_template("auto", tokenizer)
    for gen, msgs in ((False, conv), (True, conv[:-1])):
        expected = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert template.render(msgs, add_generation_prompt=gen) == expected
    answers = [t for t, trained in template.render_segments(conv) if trained]
    assert answers == ["The capital of France is Paris.<|im_end|>", "Rome.<|im_end|>"]
    ids, mask = template.encode(conv, tokenizer)
    assert ids == tokenizer(template.render(conv), add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "".join(answers)


def test_forward_pass_and_greedy_next_token(tokenizer):
    model = load_model()
    prompt = get_template("auto", tokenizer).render(CONV[:1], add_generation_prompt=True)
    batch = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all()
    next_id = int(logits[0, -1].argmax())
    assert 0 <= next_id < len(tokenizer)
    assert tokenizer.decode([next_id]).strip()
