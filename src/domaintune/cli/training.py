"""The train command (and inspect, which shows what training sees)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from domaintune.cli.common import put, recipe_args
from domaintune.config import METHOD_NAMES, ModelConfig, TrainConfig, field_help, load_recipe
from domaintune.errors import UserError

def build_train(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune train --config cpu_demo.yaml\n"
                "  domaintune train --data prepared/ --method lora -o runs/lora --set train.max_steps=100\n"
                "  domaintune train --config cpu_demo.yaml --resume\n"
                "  domaintune train --data prepared_v2/ --init-from runs/v1 -o runs/v2 "
                "--set train.replay.data=prepared_v1/train.jsonl")
    recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--data", help=field_help(TrainConfig, "data_dir"))
    p.add_argument("--method", choices=METHOD_NAMES, help="fine-tuning method (options via --set train.method.KEY=V)")
    p.add_argument("-o", "--output-dir", help=field_help(TrainConfig, "output_dir"))
    p.add_argument("--max-steps", type=int, help=field_help(TrainConfig, "max_steps"))
    p.add_argument("--epochs", help=field_help(TrainConfig, "epochs"))
    p.add_argument("--time-budget", help=field_help(TrainConfig, "time_budget"))
    p.add_argument("--lr", type=float, help=field_help(TrainConfig, "learning_rate"))
    p.add_argument("--init-from", help=field_help(TrainConfig, "init_from"))
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--force", action="store_true", help="resume even though the recipe changed")


def run_train(a: argparse.Namespace) -> int:
    from domaintune import api

    flags: dict[str, Any] = {}
    for key, value in (("data_dir", a.data), ("output_dir", a.output_dir), ("max_steps", a.max_steps),
                       ("epochs", a.epochs), ("learning_rate", a.lr), ("time_budget", a.time_budget),
                       ("init_from", a.init_from)):
        put(flags, key, value)
    if a.method:
        flags["method"] = {"method": a.method}
    base = {"train": flags, **({"model": {"name": a.model}} if a.model else {})}
    result = api.train(load_recipe(a.config, a.set, base=base), resume=a.resume, force=a.force)
    if os.environ.get("RANK", "0") != "0":  # under accelerate/torchrun, rank 0 reports
        return 0
    for domain, one in (result.items() if isinstance(result, dict) else [(None, result)]):
        _print_run(one, domain)
    return 0


def _print_run(result: Any, domain: str | None) -> None:
    if domain:
        print(f"domain {domain}:", end=" ")
    summary = result.summary or {}
    metric = summary.get("select_by", "loss")
    if result.best_val_loss is None or result.base_val_loss is None:   # no validation split
        print(f"run: {result.run_dir}  steps {result.steps}  (no validation loss)")
    elif metric != "loss" and summary.get("best_metric") is not None:
        print(f"run: {result.run_dir}  steps {result.steps}  val {metric} {summary['base_metric']:.1f} (base) -> "
              f"{summary['best_metric']:.1f} (best, step {result.best_step}; val loss {result.best_val_loss:.4f})")
    else:
        print(f"run: {result.run_dir}  steps {result.steps}  val loss {result.base_val_loss:.4f} (base) -> "
              f"{result.best_val_loss:.4f} (best, step {result.best_step})")


def build_tune(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune tune --config my.yaml --budget 30m -o runs/tune\n"
                "  domaintune tune --data prepared/ --budget 2h -o runs/tune   # again: continues the search\n"
                "  domaintune train --config runs/tune/best.yaml -o runs/best")
    recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--data", help=field_help(TrainConfig, "data_dir"))
    p.add_argument("--budget", required=True, help="wall time of the whole search: 90s, 30m, 2h (across restarts)")
    p.add_argument("--trials", type=int, help="stop after this many trials (default: as many as the budget allows)")
    p.add_argument("-o", "--output-dir", required=True, help="the search folder: study.db, trials/, tune.html, best.yaml")


def run_tune(a: argparse.Namespace) -> int:
    from domaintune import api
    from domaintune.config.train import parse_duration

    try:
        budget = parse_duration(a.budget)
    except ValueError as exc:
        raise UserError(str(exc), hint="pass --budget as 90s, 30m or 2h") from None
    flags: dict[str, Any] = {}
    put(flags, "data_dir", a.data)
    base = {"train": flags, **({"model": {"name": a.model}} if a.model else {})}
    out = api.tune(load_recipe(a.config, a.set, base=base), budget, a.output_dir, max_trials=a.trials,
                   say=lambda line: print(line, flush=True))
    best = out["best"]
    if best is None:
        print(f"no trial finished within the budget; see {out['paths']['html']}")
        return 0
    print(f"best: trial {best['trial']}, val {out['metric']} {best['value']:.4g}  {best['params']}")
    print(f"recipe: {out['paths']['best_recipe']}\nreport: {out['paths']['html']}\nrun: {best['run_dir']}")
    return 0


def build_inspect(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune inspect prepared/train.jsonl\n  domaintune inspect data.jsonl --template deepseek_r1 -n 5"
    p.add_argument("data", metavar="DATA.jsonl", help="a prepared split")
    recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--template", help=field_help(ModelConfig, "template"))
    p.add_argument("-n", type=int, default=3, help="examples to show (default: 3)")


def run_inspect(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from domaintune import api

    model = {k: v for k, v in (("name", a.model), ("template", a.template)) if v is not None}
    result = api.inspect(load_recipe(a.config, a.set, base={"model": model} if model else None), a.data, a.n)
    console = Console()
    for i, spans in enumerate(result.examples, 1):
        console.rule(f"example {i}  (green = trained)")
        console.print(Text.assemble(*((text, "bold green" if trained else "dim") for text, trained in spans)))
    console.print(f"{result.trained} of {result.tokens} tokens trained ({result.share:.1%}); "
                  f"skipped: {dict(result.skipped) or 'none'}")
    if result.trained == 0:
        raise UserError("no token would be trained", file=a.data,
                        hint="check the template and that rows have assistant answers, or set train.train_on_prompt")
    return 0



