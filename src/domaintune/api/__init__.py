"""The Python API: one function per CLI command, each a few named steps.

This package is the only place that reads a whole `Recipe`; it hands each component its own
section or flat arguments. The CLI is a thin shell over these functions.

    from domaintune import api
    from domaintune.config import load_recipe
    recipe = load_recipe("recipe.yaml")
    api.prepare(recipe)
    run = api.train(recipe)
    result, paths = api.evaluate(recipe, adapter=str(run.run_dir))

Modules: `data` (prepare, inspect, agree, shipped recipes and datasets), `training` (train),
`evaluation` (evaluate, compare, review), `deploy` (export, serve, chat), `tune` (hyperparameter
search), `monitor` (production traffic), `demo`.
"""

from __future__ import annotations

from domaintune.api.data import (agree, bundled_dataset, copy_recipe, inspect, prepare, recipe_names,
                                 resolve_path)
from domaintune.api.demo import demo, demo_recipe
from domaintune.api.deploy import chat, export, serve
from domaintune.api.evaluation import (compare, compare_table, evaluate, forgetting_summary, load_for_eval, metrics_table,
                                       review_export, review_import)
from domaintune.api.monitor import monitor_drift, monitor_export, monitor_promote, monitor_shadow
from domaintune.api.retrieval import kb_build, kb_search
from domaintune.api.training import train
from domaintune.api.tune import tune

__all__ = ["agree", "bundled_dataset", "chat", "compare", "compare_table", "copy_recipe", "demo", "demo_recipe", "evaluate", "export", "forgetting_summary",
           "inspect", "kb_build", "kb_search", "load_for_eval", "metrics_table", "monitor_drift", "monitor_export", "monitor_promote", "monitor_shadow", "prepare", "recipe_names", "resolve_path", "review_export", "review_import",
           "serve", "train", "tune"]
