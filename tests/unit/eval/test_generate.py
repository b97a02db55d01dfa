"""Tests for eval/generate.py: prompt ids equal the training prefix, answers, stops, latency figures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.eval.generate import (answer_text, eval_mode, generate_answers, latency_stats, measure_latency,
                                      split_last_turn)
from domaintune.models.codec import prompt_ids
from domaintune.models.codec import stop_ids as stop_token_ids
from domaintune.models.decode import Generation, SamplingParams, generate
from domaintune.models.templates import get_template
from domaintune.models.batch import IGNORE_INDEX, encode_record

RECORDS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}],
     "metadata": {"label": "geo"}},
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Please summarize the report."},
                  {"role": "assistant", "content": "Machine learning models learn patterns."},
                  {"role": "user", "content": "北京是中国的首都吗？"},
                  {"role": "assistant", "content": "是的，北京是中国的首都。"}]},
    {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "...fine, thanks"}]},
]
TEMPLATES = ["chatml", "deepseek_llm", "deepseek_v3", "tokenizer"]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def assert_prompt_is_training_prefix(record, tokenizer, template):
    messages, _ = split_last_turn(record["messages"])
    ids = prompt_ids(template, tokenizer, messages)
    example = encode_record(record, tokenizer, template, max_len=4096).example
    assert example.input_ids[:len(ids)] == ids
    # Training starts right after the prompt. One exception, a gap in the deepseek_llm template (its
    # prompt ends "Assistant:" while training text has "Assistant: "): when BPE leaves that space as a
    # lone token, the space is untrained and the first trained token follows it.
    first_trained = next(i for i in range(len(ids), len(example)) if example.labels[i] != IGNORE_INDEX)
    assert first_trained - len(ids) in ((0, 1) if template.name == "deepseek_llm" else (0,))
    assert all(label == IGNORE_INDEX for label in example.labels[max(0, len(ids) - 3):len(ids)])


@pytest.mark.parametrize("name", TEMPLATES)
def test_prompt_ids_are_the_training_encoding_prefix(name, tiny_tokenizer):
    template = get_template(name, tiny_tokenizer)
    for record in RECORDS:
        assert_prompt_is_training_prefix(record, tiny_tokenizer, template)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.text("ab 你.\n,?", min_size=1, max_size=20),
                                st.text("xy 好!\n.", min_size=1, max_size=20)), min_size=1, max_size=3))
def test_prompt_prefix_property_chatml(turns, tiny_tokenizer):
    messages = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    template = get_template("chatml")
    prompt, _ = split_last_turn(messages)
    ids = prompt_ids(template, tiny_tokenizer, prompt)
    full = encode_record({"messages": messages}, tiny_tokenizer, template, max_len=4096).example
    assert full.input_ids[:len(ids)] == ids


def test_split_last_turn_drops_trailing_turns_and_rejects_no_answer():
    messages = [*RECORDS[0]["messages"], {"role": "user", "content": "and?"}]
    prompt, reference = split_last_turn(messages)
    assert prompt == RECORDS[0]["messages"][:1] and reference == "The capital of France is Paris."
    with pytest.raises(UserError):
        split_last_turn([{"role": "user", "content": "hi"}])
    with pytest.raises(UserError):
        split_last_turn([{"role": "assistant", "content": "hi"}])


def test_stop_ids_are_end_of_turn_tokens_and_eos(tiny_tokenizer):
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(get_template("chatml"), tiny_tokenizer) == (im_end,)  # no <|endoftext|> in this vocab
    eos_ds = tiny_tokenizer.convert_tokens_to_ids("<｜end▁of▁sentence｜>")
    assert stop_token_ids(get_template("deepseek_v3"), tiny_tokenizer) == (eos_ds, im_end)


def test_answer_text_drops_stop_token_and_stop_strings(tiny_tokenizer):
    template = get_template("chatml")
    body = tiny_tokenizer(" Paris is", add_special_tokens=False)["input_ids"]
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert answer_text(tiny_tokenizer, template, Generation([*body, im_end], "stop", 3, 0, 0)) == "Paris is"
    # A stop string the model spells out mid-stream (not as the stop token) also ends the answer.
    tail = tiny_tokenizer("<|endoftext|>more", add_special_tokens=False)["input_ids"]
    assert answer_text(tiny_tokenizer, template, Generation([*body, *tail], "length", 3, 0, 0)) == "Paris is"


def test_generate_answers_rows_match_the_decoder(llama, tiny_tokenizer):
    template = get_template("chatml")
    params = SamplingParams(max_new_tokens=12)
    rows = generate_answers(llama, tiny_tokenizer, template, RECORDS, params, batch_size=2)
    assert [r["reference"] for r in rows] == [rec["messages"][-1]["content"] for rec in RECORDS]
    assert [r["prompt"] for r in rows] == ["What is the capital of France?", "北京是中国的首都吗？", "Hello"]
    assert rows[0]["metadata"] == {"label": "geo"} and rows[1]["metadata"] == {}
    stops = SamplingParams(max_new_tokens=12, stop_ids=stop_token_ids(template, tiny_tokenizer))
    for record, row in zip(RECORDS, rows):
        ids = prompt_ids(template, tiny_tokenizer, split_last_turn(record["messages"])[0])
        gen = generate(llama, [ids], stops, tiny_tokenizer.pad_token_id)[0]
        assert row["prompt_tokens"] == len(ids) and row["generated_tokens"] == len(gen.token_ids)
        assert row["prediction"] == answer_text(tiny_tokenizer, template, gen)
        assert row["prompt_text"].endswith("<|im_start|>assistant\n")
        assert 0 <= row["first_token_s"] <= row["total_s"]


def test_generate_answers_applies_few_shot_and_restores_train_mode(llama, tiny_tokenizer):
    def shots(record):
        return [{"role": "user", "content": "Example Q"}, {"role": "assistant", "content": "Example A"},
                *record["messages"]]

    llama.train()
    try:
        rows = generate_answers(llama, tiny_tokenizer, get_template("chatml"), RECORDS[:1],
                                SamplingParams(max_new_tokens=2), few_shot=shots)
        assert llama.training
    finally:
        llama.eval()
    assert "Example A" in rows[0]["prompt_text"] and rows[0]["reference"] == RECORDS[0]["messages"][-1]["content"]


def test_eval_mode_turns_dropout_off_and_restores(llama):
    llama.train()
    with eval_mode(llama):
        assert not llama.training
    assert llama.training
    llama.eval()


def test_latency_stats_hand_computed():
    gens = [Generation([1, 2, 3], "length", 4, 0.1, 0.3),       # 100 ms/token, ttft 100 ms
            Generation([1, 2, 3, 4, 5], "stop", 4, 0.2, 1.0),   # 200 ms/token, ttft 200 ms
            Generation([1], "length", 4, 0.3, 0.3)]             # one token: ttft only
    stats = latency_stats(gens, n_tokens=11)
    assert stats["ms_per_token_p50"] == pytest.approx(150.0)
    assert stats["ms_per_token_p95"] == pytest.approx(195.0)
    assert stats["ttft_ms_p50"] == pytest.approx(200.0)
    assert stats["ttft_ms_p95"] == pytest.approx(290.0)
    assert stats["seconds_for_n_tokens"] == pytest.approx(0.2 + 10 * 0.150)
    rows = [{"generated_tokens": 3, "first_token_s": 0.1, "total_s": 0.3}]
    assert latency_stats(rows)["ms_per_token_p50"] == pytest.approx(100.0)
    assert math.isnan(latency_stats([])["ttft_ms_p50"])


def test_measure_latency_generates_exactly_n_tokens(llama, tiny_tokenizer):
    calls = []

    class Counting:
        training = False

        def parameters(self):
            return llama.parameters()

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def __call__(self, **kwargs):
            calls.append(kwargs["input_ids"].shape)
            return llama(**kwargs)

    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Explain the theorem."}]]
    stats = measure_latency(Counting(), tiny_tokenizer, get_template("chatml"), prompts, n_tokens=9)
    assert len(calls) == 8 + 2 * 9  # warm-up (8 tokens), then 9 forwards per request: never cut by a stop
    assert stats["requests"] == 2 and stats["n_tokens"] == 9
    assert 0 < stats["ms_per_token_p50"] and 0 < stats["seconds_p50"] <= stats["seconds_p95"]
