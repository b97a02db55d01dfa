"""domaintune.tune: hyperparameter search with Optuna under a wall-time budget (`domaintune tune`).

`api.tune` owns the loop over trials (each trial is one `api.train` run); this package holds the
pieces below it: the search space (`space.py`), the study in SQLite with its resume rules
(`study.py`) and the trials table and HTML page (`report.py`).
"""
