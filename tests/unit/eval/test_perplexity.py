"""Tests for eval/perplexity.py: per-example NLL equals a direct computation; weighting; skips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from domaintune.eval.perplexity import perplexity
from domaintune.models.templates import get_template
from domaintune.models.batch import IGNORE_INDEX, encode_record

# Two chat records (one multi-turn, with Chinese) and one plain text record.
RECORDS = [json.loads(line) for line in (Path(__file__).parents[2] / "assets" / "mixed_records.jsonl").open(encoding="utf-8")]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def direct_nll(model, tokenizer, template, record) -> tuple[float, int]:
    """Mean NLL from full logits and transformers-style shifted labels: an independent path."""
    ex = encode_record(record, tokenizer, template, max_len=4096).example
    logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
    targets = torch.tensor(ex.labels[1:])
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    n = int((targets != IGNORE_INDEX).sum())
    return float(ce) / n, n


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_deepseek_v3"])
def test_per_example_nll_matches_direct_computation(family, tiny_tokenizer, request):
    model, template = load(request.getfixturevalue(family)), get_template("chatml")
    out = perplexity(model, tiny_tokenizer, template, RECORDS)
    expected = [direct_nll(model, tiny_tokenizer, template, r) for r in RECORDS]
    assert out["per_example_nll"] == pytest.approx([e[0] for e in expected], abs=1e-5)
    assert out["per_example_tokens"] == [e[1] for e in expected]
    total = sum(n for _, n in expected)
    assert out["tokens"] == total and out["skipped"] == 0
    assert out["mean_nll"] == pytest.approx(sum(v * n for v, n in expected) / total, abs=1e-5)  # token-weighted
    assert out["ppl"] == pytest.approx(math.exp(out["mean_nll"]))


def test_record_with_answer_truncated_away_is_skipped(tiny_llama, tiny_tokenizer):
    model, template = load(tiny_llama), get_template("chatml")
    prompt_len = len(tiny_tokenizer(template.render(RECORDS[0]["messages"][:1]), add_special_tokens=False)["input_ids"])
    out = perplexity(model, tiny_tokenizer, template, [RECORDS[0], RECORDS[2]], max_len=prompt_len)
    assert out["per_example_nll"][0] is None and out["per_example_tokens"][0] == 0
    assert out["per_example_tokens"][1] == prompt_len - 1  # the text record, truncated, is still scored
    assert out["skipped"] == 1 and out["tokens"] == prompt_len - 1
    empty = perplexity(model, tiny_tokenizer, template, RECORDS[:1], max_len=prompt_len)
    assert math.isnan(empty["ppl"]) and empty["tokens"] == 0


def test_prompt_tuning_model_is_scored_through_peft(tiny_llama, tiny_tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    template = get_template("chatml")
    torch.manual_seed(0)
    base = perplexity(load(tiny_llama), tiny_tokenizer, template, RECORDS)
    model = get_peft_model(load(tiny_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    tuned = perplexity(model, tiny_tokenizer, template, RECORDS)
    assert tuned["tokens"] == base["tokens"]
    assert tuned["mean_nll"] != pytest.approx(base["mean_nll"], abs=1e-6)  # virtual tokens were in force


@pytest.mark.parametrize("method", ["plain", "prompt_tuning"])
def test_batching_does_not_change_per_example_values(method, tiny_llama, tiny_tokenizer, monkeypatch):
    """Packed rows (plain model) and padded batches (prompt tuning) score each example as alone."""
    import domaintune.eval.perplexity as ppl_mod

    model = load(tiny_llama)
    if method == "prompt_tuning":
        from peft import PromptTuningConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    template = get_template("chatml")
    examples = ppl_mod.encode_for_eval(tiny_tokenizer, template, RECORDS * 2, 1024)
    assert len(list(ppl_mod.example_batches(model, examples))) < 3  # several examples per batch
    together = perplexity(model, tiny_tokenizer, template, RECORDS * 2)
    monkeypatch.setattr(ppl_mod, "BATCH_TOKENS", 1)  # every example in a batch of its own
    assert len(list(ppl_mod.example_batches(model, examples))) == 6
    alone = perplexity(model, tiny_tokenizer, template, RECORDS * 2)
    assert together["per_example_tokens"] == alone["per_example_tokens"]
    assert together["per_example_nll"] == pytest.approx(alone["per_example_nll"], abs=1e-5)
    assert together["per_example_nll"][:3] == pytest.approx(together["per_example_nll"][3:], abs=1e-5)
