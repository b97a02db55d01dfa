"""`api.tune`: hyperparameter search under a wall-time budget; each trial is one `api.train` run.

    result = api.tune(load_recipe("my.yaml"), budget_s=30 * 60, output_dir="runs/tune")
    result["best"]["value"], result["paths"]["best_recipe"]

Optuna's TPE sampler proposes the trials (space: `tune/space.py`; trial 0 is the recipe itself),
a median pruner stops a trial whose validation metric falls behind the finished ones at the same
point of their runs, and the study is a SQLite file in the output folder, so running the same
command again continues an interrupted search. The metric is the one training selects by
(`train.select_by`: accuracy on a closed answer set, else the loss), measured on the validation
split only: the test split is never looked at. Each trial gets a share of the budget as its own
`train.time_budget` (at most a quarter, so at least four trials fit; model loading and the final
save come on top of it), and no trial starts once the budget is spent. best.yaml repeats the
winning trial's schedule exactly (its steps as `train.max_steps`). The output folder holds trials/trial-N/ (each a complete run folder), trials.csv,
tune.html and best.yaml, the winning recipe ready for `domaintune train --config`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from domaintune.config import Recipe
from domaintune.errors import UserError
from domaintune.files import write_text_atomic

MIN_TRIALS = 4        # a trial gets at most budget / MIN_TRIALS
MIN_TRIAL_S = 30.0    # below this no trial starts
TRIALS_DIR = "trials"


class _Pruning:
    """A training callback: report each validation to the trial; stop the run when Optuna says so.

    Validations are reported by their index (1st, 2nd, ...), not by step: trials with other
    batch sizes or epochs have other step counts, but each validates about as often per run.
    """

    def __init__(self, trial: Any, key: str) -> None:
        self.trial, self.key, self.seen = trial, key, 0

    def on_eval(self, record: dict[str, Any]) -> None:
        import optuna

        if record["step"] == 0 or self.key not in record:
            return
        self.seen += 1
        self.trial.report(float(record[self.key]), self.seen)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at validation {self.seen} ({self.key} {record[self.key]:.4g})")


def tune(recipe: Recipe, budget_s: float, output_dir: str, *, max_trials: int | None = None,
         progress: bool = True, say: Any = None) -> dict[str, Any]:
    """Search the recipe's train settings for the best validation metric within `budget_s` seconds.

    Args:
        recipe: the recipe to start from (its `train.data_dir` must hold train.jsonl and val.jsonl).
        budget_s: wall time of the whole search, counted across restarts on the same folder.
        output_dir: the search folder (study.db, trials/, trials.csv, tune.html, best.yaml).
        max_trials: stop after this many trials in all (None: as many as the budget allows).
        progress: training progress bars.
        say: called with a line of text as each trial ends.

    Returns:
        `{"metric", "direction", "best": {"trial", "value", "params", "run_dir"} | None,
        "trials": rows, "paths": {"html", "csv", "best_recipe", "study"}}`.

    Raises:
        UserError: no validation data, or a folder whose study searches in the other direction.
    """
    from domaintune.api.training import train
    from domaintune.data.answers import closed_answer_set
    from domaintune.train.data import load_split
    from domaintune.train.plan import resolve_epochs
    from domaintune.train.selection import LOSS, resolve_select_by
    from domaintune.tune import report, space
    from domaintune.tune.study import STUDY_FILE, add_spent, finished, open_study, spent

    say = say or (lambda _line: None)
    out, cfg = Path(output_dir), recipe.train
    data = Path(cfg.data_dir)
    train_split, val_split = load_split(data / "train.jsonl"), load_split(data / "val.jsonl")
    if not len(val_split):
        raise UserError("tune needs validation data to compare trials", file=str(data / "val.jsonl"),
                        hint="prepare with a validation split (prepare.split.val > 0)")
    metric = resolve_select_by(cfg.select_by, closed_answer_set(train_split) is not None)
    key = "val_loss" if metric == LOSS else f"val_{metric}"
    study = open_study(out, "minimize" if metric == LOSS else "maximize", cfg.seed)
    baseline = space.baseline_params(cfg, resolve_epochs(cfg.epochs, len(train_split)))
    if not study.trials:
        study.enqueue_trial(baseline)
    started, before = time.perf_counter(), spent(study)

    def remaining() -> float:
        return budget_s - before - (time.perf_counter() - started)

    def objective(trial: Any) -> float:
        params = space.suggest(trial, cfg, baseline)
        trial_budget = min(remaining(), budget_s / MIN_TRIALS)
        overrides = [*space.to_overrides(params), f"train.output_dir={out / TRIALS_DIR / f'trial-{trial.number}'}",
                     f"train.time_budget={trial_budget:.0f}", f"train.select_by={metric}"]
        result = train(_with(recipe, overrides), force=True, progress=progress, callbacks=(_Pruning(trial, key),))
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("total_steps", result.summary.get("total_steps"))  # the schedule it ran
        trial.set_user_attr("run_dir", str(result.run_dir))
        value = result.summary.get("best_metric")
        if value is None:
            raise UserError("a trial finished without a validation result", file=str(result.run_dir),
                            hint="check that val.jsonl holds chat records")
        return float(value)

    def after(study: Any, trial: Any) -> None:
        add_spent(study, (trial.datetime_complete - trial.datetime_start).total_seconds()
                  if trial.datetime_complete and trial.datetime_start else 0.0)
        say(f"trial {trial.number}: {trial.state.name.lower()}"
            + (f", {metric} {trial.value:.4g}" if trial.value is not None else "") + f"  {trial.params}")
        if remaining() < MIN_TRIAL_S:
            study.stop()

    from optuna.trial import TrialState

    ran = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    left = None if max_trials is None else max(0, max_trials - len(ran))
    if remaining() >= MIN_TRIAL_S and left != 0:
        # A trial that fails (say, a loss that became NaN at a high learning rate) is recorded as
        # failed and the search goes on; pruned trials are Optuna's own business.
        study.optimize(objective, n_trials=left, timeout=max(1.0, remaining()), callbacks=[after],
                       catch=(UserError,))
    return _results(recipe, study, metric, out, report, finished, STUDY_FILE)


def _with(recipe: Recipe, overrides: list[str]) -> Recipe:
    from domaintune.config import apply_overrides

    return apply_overrides(recipe, overrides)


def _results(recipe: Recipe, study: Any, metric: str, out: Path, report: Any, finished: Any,
             study_file: str) -> dict[str, Any]:
    from domaintune.tune import space

    rows = report.trial_rows(study)
    done = finished(study)
    best = None
    paths = {"csv": report.write_trials(rows, out), "study": out / study_file}
    if done:
        top = done[0]
        best = {"trial": top.number, "value": top.value, "params": top.params, "run_dir": top.user_attrs.get("run_dir")}
        # The schedule the trial ran (its time budget may have shortened it), so `train` repeats it.
        steps = top.user_attrs.get("total_steps")
        best_recipe = _with(recipe, [*space.to_overrides(_full_params(top.params, recipe)),
                                     *([f"train.max_steps={steps}"] if steps else [])])
        paths["best_recipe"] = _write_recipe(best_recipe, out / report.BEST_YAML)
    paths["html"] = report.write_html(study, rows, metric, best, out)
    return {"metric": metric, "direction": study.direction.name.lower(), "best": best, "trials": rows,
            "paths": paths}


def _full_params(params: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    from domaintune.tune import space

    base = space.baseline_params(recipe.train, 1.0)
    return {**base, **params}


def _write_recipe(recipe: Recipe, path: Path) -> Path:
    import yaml

    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text_atomic(path, "# The best recipe `domaintune tune` found (validation data only).\n" + text)
    return path
