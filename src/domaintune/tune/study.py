"""The Optuna study of a search: TPE sampling, median pruning, SQLite storage inside the output folder.

The study lives in `OUT/study.db`, so `domaintune tune` run again on the same folder continues the
search: finished and pruned trials are kept, and a trial that was running when the process died
is marked failed (one search per folder at a time). The time already spent is kept in the study
(`spent_s`), so `--budget` is the wall time of the whole search across restarts.

    study = open_study(Path("runs/tune"), direction="maximize", seed=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STUDY_FILE = "study.db"
STUDY_NAME = "domaintune"
SPENT = "spent_s"
STARTUP_TRIALS = 2  # trials run to the end before the pruner compares against them


def open_study(out: Path, direction: str, seed: int) -> Any:
    """Create or load the study in `out`; running trials left by a dead process become failed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{(out / STUDY_FILE).resolve()}", study_name=STUDY_NAME, load_if_exists=True,
        direction=direction, sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=0))
    if study.direction.name.lower() != direction:
        from domaintune.errors import UserError

        raise UserError(f"the study in this folder {study.direction.name.lower()}s; this search would {direction}",
                        file=str(out / STUDY_FILE), hint="use a new output folder for a search by another metric")
    import datetime

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        if trial.datetime_start is not None:  # its time counts against the budget too
            add_spent(study, (datetime.datetime.now() - trial.datetime_start).total_seconds())
    return study


def spent(study: Any) -> float:
    """Seconds the search has run so far, over every invocation."""
    return float(study.user_attrs.get(SPENT, 0.0))


def add_spent(study: Any, seconds: float) -> None:
    study.set_user_attr(SPENT, spent(study) + seconds)


def finished(study: Any) -> list[Any]:
    """Completed trials, best first."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
