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
    assert set(prior["by_kind"]) == {"neighbours", "tfidf_lr"} and prior["by_kind"][prior["kind"]]["weight"] == prior["weight"]
    assert all(f["val_accuracy"] <= prior["val_accuracy"] for f in prior["by_kind"].values())
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
    off = r.model_copy(update={"train": r.train.model_copy(update={"neighbour_prior": False})})
    run = api.train(off, force=True, progress=False)
    assert not (run.run_dir / PRIOR_FILE).exists() and find_artifact(run.run_dir).prior is None


def test_serve_mixes_in_the_runs_prior_as_eval_does(make_recipe, tmp_path):
    """Greedy served answers inside the run's set are eval's with the prior, row for row (the model alone
    gets some rows wrong, so a server that ignored the prior would differ); a guided_choice of other
    answers decodes with the model alone; an adapter export keeps the prior."""
    import httpx

    from domaintune.serve.adapters import load_served
    from domaintune.serve.app import build_app
    from domaintune.serve.options import ServeOptions
    from domaintune.serve.server import serve_in_thread

    r = make_recipe()
    r = r.model_copy(update={"train": r.train.model_copy(update={"neighbour_prior": True})})
    run = api.train(r, force=True, progress=False)
    mixed, _ = api.evaluate(r, adapter=str(run.run_dir), output_dir=str(tmp_path / "mixed"), progress=False)
    served = load_served(r.model.name, {"run": run.run_dir}, template="chatml")
    assert served.routes["run"].prior.weight == json.loads((run.run_dir / PRIOR_FILE).read_text())["weight"]
    rows = [json.loads(line) for line in open(r.eval.data, encoding="utf-8")]
    with serve_in_thread(build_app(served, ServeOptions(closed_set="auto"))) as url:
        answers = [httpx.post(url + "/v1/chat/completions", timeout=60,
                              json={"model": "run", "messages": row["messages"][:-1], "temperature": 0}).json()
                   for row in rows]
        other = httpx.post(url + "/v1/chat/completions", timeout=60,
                           json={"model": "run", "messages": rows[0]["messages"][:-1],
                                 "guided_choice": ["yes", "no"]}).json()
    assert len(answers) == len(mixed.predictions)
    for answer, expected in zip(answers, mixed.predictions):
        choice = answer["choices"][0]
        assert choice["message"]["content"] == expected["prediction"]
        assert abs(choice["confidence"] - expected["confidence"]) < 1e-3
    assert other["choices"][0]["message"]["content"] in ("yes", "no")
    # an adapter export carries the prior and its index, so serving the export mixes in the same vote
    from domaintune.serve.knowledge import run_extras

    api.export(str(run.run_dir), "adapter", str(tmp_path / "export"), samples=1)
    exported = run_extras(tmp_path / "export")
    assert (tmp_path / "export" / PRIOR_DIR / "manifest.json").is_file()
    assert exported.prior.weight == served.routes["run"].prior.weight and exported.labels == tuple(LABELS)


def test_promote_refuses_a_worse_candidate_and_takes_a_better_one(make_recipe, tmp_path):
    """`monitor promote` on a fixed test set: the untrained base (about a third right) is refused
    over the trained run with its prior (every row right), and the run is promoted over the base."""
    r = make_recipe()
    run = api.train(r, force=True, progress=False)
    refused = api.monitor_promote(r, "base", str(run.run_dir), output_dir=str(tmp_path / "refused"))
    assert not refused["promote"] and "exact_match" in refused["worse"]
    taken = api.monitor_promote(r, str(run.run_dir), "base", output_dir=str(tmp_path / "taken"))
    assert taken["promote"] and "exact_match" in taken["better"] and not taken["worse"]
    decision = (tmp_path / "taken" / "decision.md").read_text()
    assert "**yes**" in decision and "| exact_match |" in decision
