"""`api.tune` on a tiny model: trials run within the budget and write their report; an interrupted
search resumes from its SQLite study (finished trials kept, the dead one marked failed)."""

from __future__ import annotations

import yaml

from domaintune import api
from domaintune.config import apply_overrides


def test_search_writes_trials_report_and_best_recipe(make_recipe, tmp_path):
    recipe = apply_overrides(make_recipe(), ["train.max_steps=null", "train.epochs=1"])
    out = tmp_path / "tune"
    result = api.tune(recipe, budget_s=600, output_dir=str(out), max_trials=3, progress=False)
    assert result["metric"] == "accuracy" and result["direction"] == "maximize"
    assert len(result["trials"]) == 3 and result["trials"][0]["learning_rate"] == recipe.train.learning_rate
    best = result["best"]
    assert best["value"] == max(t["value"] for t in result["trials"] if t["value"] is not None)
    saved = yaml.safe_load(result["paths"]["best_recipe"].read_text(encoding="utf-8"))
    # the learning rate the best trial ran with (trials get it to 6 significant digits, tune/space.py)
    assert saved["train"]["learning_rate"] == float(f"{best['params']['learning_rate']:.6g}")
    assert "optimisation history" in result["paths"]["html"].read_text(encoding="utf-8")
    assert result["paths"]["csv"].read_text(encoding="utf-8").count("\n") == 4


def test_an_interrupted_search_resumes(make_recipe, tmp_path):
    import optuna
    from optuna.trial import TrialState

    recipe = apply_overrides(make_recipe(), ["train.max_steps=null", "train.epochs=1"])
    out = tmp_path / "tune"
    api.tune(recipe, budget_s=600, output_dir=str(out), max_trials=1, progress=False)
    study = optuna.load_study(study_name="domaintune", storage=f"sqlite:///{out / 'study.db'}")
    study.ask()  # a trial left RUNNING, as by a process killed mid-trial
    result = api.tune(recipe, budget_s=600, output_dir=str(out), max_trials=3, progress=False)
    states = [t["state"] for t in result["trials"]]
    assert states == ["complete", "fail", "complete"]
    assert result["trials"][0]["value"] is not None
    study = optuna.load_study(study_name="domaintune", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["spent_s"] > 0 and len(study.get_trials(states=(TrialState.RUNNING,))) == 0
