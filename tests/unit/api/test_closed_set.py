"""The closed answer set end to end on a tiny model: training records it, selects by accuracy,
and eval decodes inside it with confidences (recorded set for a run, the pool's for a base model)."""

from __future__ import annotations

import json

from domaintune import api
from domaintune.methods.artifact import LABELS_FILE, find_artifact

LABELS = ["cardiology", "neurology", "oncology"]


def test_training_records_the_set_and_eval_decodes_inside_it(make_recipe, tmp_path):
    r = make_recipe()
    run = api.train(r, force=True, progress=False)
    assert json.loads((run.run_dir / LABELS_FILE).read_text())["answers"] == LABELS
    assert find_artifact(run.run_dir).labels == LABELS
    assert run.summary["select_by"] == "accuracy" and run.summary["base_metric"] is not None
    result, paths = api.evaluate(r, adapter=str(run.run_dir), progress=False)
    preds = result.predictions
    assert {p["prediction"] for p in preds} <= set(LABELS)
    assert all(0 < p["confidence"] <= 1 for p in preds)
    assert result.report["calibration"]["n"] == len(preds)
    html = paths["html"].read_text(encoding="utf-8")
    assert "Confidence vs accuracy" in html and "Classic baselines" in html
    assert set(result.report["baselines"]) == {"majority", "nearest", "tfidf_lr"}
    free, _ = api.evaluate(make_recipe(closed_set="off"), adapter=str(run.run_dir),
                           output_dir=str(tmp_path / "free"), progress=False)
    assert all(p["confidence"] is None for p in free.predictions) and free.report["calibration"] is None


def test_a_base_model_decodes_inside_the_set_its_pool_forms(make_recipe):
    result, _ = api.evaluate(make_recipe(), progress=False)
    assert {p["prediction"] for p in result.predictions} <= set(LABELS)
    assert result.report["model"]["adapter"] is None
