"""The closed answer set end to end on a tiny model: training records it, selects by accuracy,
and eval decodes inside it with confidences (recorded set for a run, the pool's for a base model)."""

from __future__ import annotations

import json
import random

import pytest

from domaintune import api
from domaintune.config import Recipe
from domaintune.methods.artifact import LABELS_FILE, find_artifact

LABELS = ["cardiology", "neurology", "oncology"]
WORDS = {"cardiology": ["heart", "valve", "artery"], "neurology": ["brain", "nerve", "seizure"],
         "oncology": ["tumor", "cancer", "lymphoma"]}


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(LABELS)
        text = f"The patient has {rng.choice(WORDS[label])} trouble."
        out.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}],
                    "metadata": {"label": label}})
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    for name, n, seed in (("train", 60, 0), ("val", 12, 1), ("test", 12, 2)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)), encoding="utf-8")
    return folder


def recipe(tiny_llama, prepared, tmp_path, **eval_overrides) -> Recipe:
    return Recipe(model={"name": str(tiny_llama), "template": "chatml"},
                  train={"data_dir": str(prepared), "output_dir": str(tmp_path / "run"), "max_steps": 4,
                         "batch_tokens": 128, "threads": 1, "val_samples": 8,
                         "method": {"method": "lora", "r": 4, "dropout": 0.0}},
                  eval={"data": str(prepared / "test.jsonl"), "output_dir": str(tmp_path / "eval"),
                        "label_field": "label", "general": None, "latency_prompts": 0, "perplexity": False,
                        **eval_overrides})


def test_training_records_the_set_and_eval_decodes_inside_it(tiny_llama, prepared, tmp_path):
    r = recipe(tiny_llama, prepared, tmp_path)
    run = api.train(r, force=True, progress=False)
    assert json.loads((run.run_dir / LABELS_FILE).read_text())["answers"] == LABELS
    assert find_artifact(run.run_dir).labels == LABELS
    assert run.summary["select_by"] == "accuracy" and run.summary["base_metric"] is not None
    result, paths = api.evaluate(r, adapter=str(run.run_dir), progress=False)
    preds = result.predictions
    assert {p["prediction"] for p in preds} <= set(LABELS)
    assert all(0 < p["confidence"] <= 1 for p in preds)
    assert result.report["calibration"]["n"] == len(preds)
    assert "Confidence vs accuracy" in paths["html"].read_text(encoding="utf-8")
    free, _ = api.evaluate(recipe(tiny_llama, prepared, tmp_path, closed_set="off"), adapter=str(run.run_dir),
                           output_dir=str(tmp_path / "free"), progress=False)
    assert all(p["confidence"] is None for p in free.predictions) and free.report["calibration"] is None


def test_a_base_model_decodes_inside_the_set_its_pool_forms(tiny_llama, prepared, tmp_path):
    result, _ = api.evaluate(recipe(tiny_llama, prepared, tmp_path), progress=False)
    assert {p["prediction"] for p in result.predictions} <= set(LABELS)
    assert result.report["model"]["adapter"] is None
