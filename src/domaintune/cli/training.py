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
                "  domaintune train --config cpu_demo.yaml --resume")
    recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--data", help=field_help(TrainConfig, "data_dir"))
    p.add_argument("--method", choices=METHOD_NAMES, help="fine-tuning method (options via --set train.method.KEY=V)")
    p.add_argument("-o", "--output-dir", help=field_help(TrainConfig, "output_dir"))
    p.add_argument("--max-steps", type=int, help=field_help(TrainConfig, "max_steps"))
    p.add_argument("--epochs", type=float, help=field_help(TrainConfig, "epochs"))
    p.add_argument("--lr", type=float, help=field_help(TrainConfig, "learning_rate"))
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--force", action="store_true", help="resume even though the recipe changed")


def run_train(a: argparse.Namespace) -> int:
    from domaintune import api

    flags: dict[str, Any] = {}
    for key, value in (("data_dir", a.data), ("output_dir", a.output_dir), ("max_steps", a.max_steps),
                       ("epochs", a.epochs), ("learning_rate", a.lr)):
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
    if result.best_val_loss is None or result.base_val_loss is None:   # no validation split
        print(f"run: {result.run_dir}  steps {result.steps}  (no validation loss)")
    else:
        print(f"run: {result.run_dir}  steps {result.steps}  val loss {result.base_val_loss:.4f} (base) -> "
              f"{result.best_val_loss:.4f} (best, step {result.best_step})")


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



