"""Tests for domaintune.eval.evaluate and eval.compare on the tiny LLaMA: the whole eval path,
its files, and paired comparisons that must (and must not) call a difference significant."""

from __future__ import annotations

import json

import pytest
import torch

from domaintune.config import LoraOptions
from domaintune.errors import UserError
from domaintune.eval.compare import compare_results
from domaintune.eval.evaluate import EvalResult, EvalSettings, evaluate, read_eval, write_eval
from domaintune.methods import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template

LABELS = ["alpha", "beta", "gamma"]


def _records(n=6):
    return [{"messages": [{"role": "user", "content": f"Which class is item {i}?"},
                          {"role": "assistant", "content": LABELS[i % 3]}],
             "metadata": {"label": LABELS[i % 3]}} for i in range(n)]


@pytest.fixture(scope="module")
def parts(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = get_method("lora").apply(load_model(tiny_llama), LoraOptions(r=4, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval(), tok, get_template("chatml", tok)


SETTINGS = EvalSettings(max_new_tokens=4, batch_size=4, label_field="label", latency_prompts=1, latency_tokens=4)


def test_evaluate_reports_every_section_with_aligned_scores(parts, tmp_path):
    model, tok, tpl = parts
    records = _records()
    result = evaluate(model, tok, tpl, records, SETTINGS, general=_records(3),
                      training_texts=["alpha beta gamma"], describe={"name": "tiny"})
    report = result.report
    assert report["n"] == 6 and report["model"] == {"name": "tiny"}
    for key in ("exact_match", "bleu", "chrf", "rouge1", "rougeL", "accuracy", "macro_f1", "perplexity"):
        assert key in report["metrics"], key
    assert report["metrics"]["perplexity"] > 1
    assert report["latency"]["ms_per_token_p50"] > 0
    assert report["forgetting"]["general_kl"] > 0  # the adapter moved the distribution
    assert set(report["labels"]["per_label"]) == set(LABELS)
    assert len(result.predictions) == 6
    for row, record in zip(result.predictions, records):
        assert row["reference"] == record["messages"][-1]["content"]
        assert set(row["scores"]) >= {"exact_match", "accuracy", "nll", "bleu"}
        assert row["scores"]["accuracy"] == (100.0 if row["predicted_label"] == row["label"] else 0.0)
    paths = write_eval(result, tmp_path)
    assert json.loads(paths["report"].read_text())["n"] == 6
    assert paths["html"].read_text().count("<html") == 1
    back = read_eval(tmp_path)
    assert back.predictions == json.loads(json.dumps(result.predictions))


def test_merged_generation_answers_as_the_unmerged_adapter_and_perplexity_can_be_skipped(parts):
    from domaintune.eval.generate import generate_answers
    from domaintune.methods.inference import can_merge
    from domaintune.models.decode import SamplingParams

    model, tok, tpl = parts
    records = _records()
    unmerged = generate_answers(model, tok, tpl, records, SamplingParams(max_new_tokens=4), batch_size=4)
    settings = EvalSettings(**{**SETTINGS.__dict__, "perplexity": False, "latency_prompts": 0})
    result = evaluate(model, tok, tpl, records, settings)
    assert [r["prediction"] for r in result.predictions] == [r["prediction"] for r in unmerged]
    assert can_merge(model)  # unmerged again afterwards
    assert "perplexity" not in result.report["metrics"] and "nll" not in result.predictions[0]["scores"]


def test_few_shot_needs_a_pool_and_changes_the_prompt(parts):
    model, tok, tpl = parts
    few = EvalSettings(**{**SETTINGS.__dict__, "few_shot": 2, "latency_prompts": 0})
    with pytest.raises(UserError, match="few-shot"):
        evaluate(model, tok, tpl, _records(2), few)
    result = evaluate(model, tok, tpl, _records(2), few, pool=_records(8)[2:])
    assert result.predictions[0]["prompt_text"].count("<|im_start|>user") == 3


def _fake(correct: list[bool], prompts=None) -> EvalResult:
    preds = [{"prompt": p, "reference": "r", "prediction": "r" if c else "x",
              "scores": {"exact_match": 100.0 if c else 0.0, "nll": 1.0}}
             for p, c in zip(prompts or [f"q{i}" for i in range(len(correct))], correct)]
    return EvalResult({"metrics": {"exact_match": 100.0 * sum(correct) / len(correct)}}, preds)


def test_compare_calls_a_large_paired_gain_significant():
    a, b = _fake([False] * 40), _fake([True] * 30 + [False] * 10)
    out = compare_results(a, b, ("base", "tuned"), n_resamples=2000)
    test = out["tests"]["exact_match"]
    assert test["significant"] and test["p_value"] < 0.001
    assert test["verdict"].startswith("tuned better on exact_match: +75.0 points")
    assert "nll" not in out["tests"]
    assert len(out["examples"]) == 30 and all(e["b_correct"] and not e["a_correct"] for e in out["examples"])


def test_compare_of_equal_results_is_not_significant():
    same = [i % 2 == 0 for i in range(40)]
    out = compare_results(_fake(same), _fake(same), n_resamples=2000)
    assert not out["tests"]["exact_match"]["significant"]
    assert out["examples"] == []


def test_compare_refuses_different_examples():
    with pytest.raises(UserError, match="example 2 differs"):
        compare_results(_fake([True, True]), _fake([True, True], prompts=["q0", "other"]))
    with pytest.raises(UserError, match="different numbers"):
        compare_results(_fake([True]), _fake([True, False]))
