"""The closed answer set end to end on a tiny model: training records it, selects by accuracy,
and eval decodes inside it with confidences (recorded set for a run, the pool's for a base model)."""

from __future__ import annotations

import json

from domaintune import api
from domaintune.methods.artifact import LABELS_FILE, PRIOR_DIR, PRIOR_FILE, find_artifact

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


def test_the_neighbour_prior_is_fitted_on_validation_and_used_by_eval(make_recipe, tmp_path):
    """Each label's words never overlap, so the nearest training pairs vote right on every question:
    validation gives the vote weight, and eval with the run's prior answers every test row right,
    while the barely trained model alone (4 steps) does not."""
    r = make_recipe()
    r = r.model_copy(update={"train": r.train.model_copy(update={"neighbour_prior": True})})
    run = api.train(r, force=True, progress=False)
    prior = json.loads((run.run_dir / PRIOR_FILE).read_text())
    assert prior["weight"] > 0 and prior["val_accuracy"] == 100.0
    assert prior["val_accuracy_by_weight"]["0.0"] < 100.0 and run.summary["neighbour_prior"] == prior
    assert (run.run_dir / PRIOR_DIR / "manifest.json").is_file()
    mixed, _ = api.evaluate(r, adapter=str(run.run_dir), output_dir=str(tmp_path / "mixed"), progress=False)
    alone, _ = api.evaluate(r.model_copy(update={"eval": r.eval.model_copy(update={"neighbour_prior": False})}), adapter=str(run.run_dir),
                            output_dir=str(tmp_path / "alone"), progress=False)
    assert mixed.report["settings"]["prior_weight"] == prior["weight"] and alone.report["settings"]["prior_weight"] == 0
    assert mixed.report["metrics"]["accuracy"] == 100.0 > alone.report["metrics"]["accuracy"]
    assert all(p["metadata"]["neighbour_vote"] for p in mixed.predictions)
    assert sum(p["confidence"] for p in mixed.predictions) > sum(p["confidence"] for p in alone.predictions)


def test_turning_the_prior_off_removes_a_stale_record(make_recipe, tmp_path):
    r = make_recipe()
    on = r.model_copy(update={"train": r.train.model_copy(update={"neighbour_prior": True})})
    api.train(on, force=True, progress=False)
    assert (on.train.output_dir and find_artifact(on.train.output_dir).prior is not None)
    off = r
    run = api.train(off, force=True, progress=False)
    assert not (run.run_dir / PRIOR_FILE).exists() and find_artifact(run.run_dir).prior is None
