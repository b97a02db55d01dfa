"""Tests for eval/forgetting.py: KL is 0 for identical models, positive after a change, per-example >= 0."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.eval.forgetting import base_and_tuned_logits, general_kl, kl_per_position
from domaintune.eval.perplexity import example_batch, perplexity
from domaintune.models.templates import get_template
from domaintune.models.batch import encode_record

GENERAL = [
    {"messages": [{"role": "user", "content": "Hello there, how are you today?"},
                  {"role": "assistant", "content": "I am fine, thank you for asking."}]},
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，世界。"}]},
]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def base(tiny_llama):
    return load(tiny_llama)


def test_identical_models_have_zero_kl(base, tiny_tokenizer):
    template = get_template("chatml")
    out = general_kl(base, copy.deepcopy(base), tiny_tokenizer, template, GENERAL)
    assert out["mean_kl"] == pytest.approx(0.0, abs=1e-7)
    assert all(v == pytest.approx(0.0, abs=1e-7) for v in out["per_example_kl"])
    assert out["base_ppl"] == pytest.approx(out["tuned_ppl"])
    assert out["base_ppl"] == pytest.approx(perplexity(base, tiny_tokenizer, template, GENERAL)["ppl"])


def test_perturbed_weight_gives_positive_kl(base, tiny_tokenizer):
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight.add_(torch.randn_like(tuned.model.layers[1].mlp.down_proj.weight))
    out = general_kl(base, tuned, tiny_tokenizer, get_template("chatml"), GENERAL)
    assert out["mean_kl"] > 1e-4
    assert all(v > 0 for v in out["per_example_kl"])
    assert out["base_ppl"] != pytest.approx(out["tuned_ppl"])
    assert out["tuned_ppl"] == pytest.approx(perplexity(tuned, tiny_tokenizer, get_template("chatml"), GENERAL)["ppl"])
    assert out["tokens"] == sum(len([lab for lab in encode_record(r, tiny_tokenizer, get_template("chatml"), 512)
                                     .example.labels if lab != -100]) for r in GENERAL)


def test_kl_matches_direct_definition(base, tiny_tokenizer):
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight.mul_(1.5)
    template = get_template("chatml")
    ex = encode_record(GENERAL[1], tiny_tokenizer, template, 512).example
    with torch.no_grad():
        logits_b = base(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
        logits_t = tuned(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
    keep = torch.tensor(ex.labels[1:]) != -100
    p, log_p, log_q = F.softmax(logits_b, -1), F.log_softmax(logits_b, -1), F.log_softmax(logits_t, -1)
    expected = float((p * (log_p - log_q)).sum(-1)[keep].mean())
    out = general_kl(base, tuned, tiny_tokenizer, template, [GENERAL[1]])
    assert out["per_example_kl"][0] == pytest.approx(expected, rel=1e-4)


def test_peft_base_side_uses_disabled_adapter(tiny_llama, tiny_tokenizer, base):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tuned = get_peft_model(load(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False))
    template = get_template("chatml")
    ex = encode_record(GENERAL[0], tiny_tokenizer, template, 512).example
    with torch.no_grad():
        b_none, t_none, y_none = base_and_tuned_logits(None, tuned, example_batch(tuned, ex))
        b_sep, t_sep, y_sep = base_and_tuned_logits(base, tuned, example_batch(tuned, ex))
    torch.testing.assert_close(b_none, b_sep)
    torch.testing.assert_close(t_none, t_sep)
    assert torch.equal(y_none, y_sep) and y_none.numel() == b_none.shape[0]
    one_copy = general_kl(None, tuned, tiny_tokenizer, template, GENERAL)
    two_copies = general_kl(base, tuned, tiny_tokenizer, template, GENERAL)
    assert one_copy["mean_kl"] == pytest.approx(two_copies["mean_kl"]) and one_copy["mean_kl"] > 0
    assert one_copy["base_ppl"] == pytest.approx(two_copies["base_ppl"])
    with pytest.raises(ValueError):
        general_kl(None, base, tiny_tokenizer, template, GENERAL)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=6, max_size=6), st.lists(st.floats(-20, 20), min_size=6, max_size=6))
def test_kl_per_position_is_non_negative_and_zero_on_equal(a, b):
    x, y = torch.tensor([a]), torch.tensor([b])
    assert float(kl_per_position(x, y)[0]) >= 0
    assert float(kl_per_position(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
