"""The demo's prepare step on the real embedded tokenizer and the bundled ICD-10-CM data."""

from __future__ import annotations

import json

import pytest

from domaintune import api

pytestmark = pytest.mark.e2e


def test_demo_prepare_on_bundled_data(tmp_path):
    report = api.prepare(api.demo_recipe(str(tmp_path / "demo")), progress=False)
    totals = report["totals"]
    assert totals["balanced"] and totals["rows_in"] > 2000
    assert report["tokens"]["unit"] == "model tokens"
    assert 10 < report["tokens"]["p50"] < report["tokens"]["max"] <= 256
    data = tmp_path / "demo" / "data"
    test_rows = [json.loads(x) for x in (data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    train_codes = {json.loads(x)["metadata"]["code"] for x in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    assert test_rows and not {r["metadata"]["code"] for r in test_rows} & train_codes
    labels = {r["metadata"]["label"] for r in test_rows}
    assert len(labels) >= 15                      # stratified by chapter: every chapter in test
    assert set(report["class_balance"]["counts"]) == set(report["class_balance"]["weights"])
    assert (data / "report.md").read_text(encoding="utf-8").startswith("# domaintune prepare report")


def test_cli_prepare_with_embedded_tokenizer_counts_template_tokens(tmp_path):
    from domaintune.config import load_recipe
    from domaintune.models.load import load_tokenizer
    from domaintune.models.templates import get_template

    src = tmp_path / "one.jsonl"
    conv = {"messages": [{"role": "user", "content": "What is ICD-10?"}, {"role": "assistant", "content": "A code set."}]}
    src.write_text(json.dumps(conv) + "\n", encoding="utf-8")
    recipe = load_recipe(None, base={"prepare": {"inputs": [{"path": str(src)}], "output_dir": str(tmp_path / "o"),
                                                 "split": {"train": 1.0, "val": 0.0, "test": 0.0}}})
    report = api.prepare(recipe, progress=False)
    tok = load_tokenizer("embedded")
    # the template prepare resolved (for the embedded model, `auto` is plain ChatML)
    expected = len(tok(get_template(recipe.model.template, tok).render(conv["messages"]), add_special_tokens=False)["input_ids"])
    assert report["tokens"]["max"] == expected
