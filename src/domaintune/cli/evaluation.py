"""The evidence commands: eval, compare, review, and the demo that runs the whole loop."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from domaintune.cli.common import put, recipe_args
from domaintune.config import EvalConfig, ModelConfig, field_help, load_recipe
from domaintune.errors import UserError


def build_eval(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune eval --model embedded --data prepared/test.jsonl -o runs/eval-base\n"
                "  domaintune eval --adapter runs/demo --data prepared/test.jsonl --label-field label -o runs/eval-tuned\n"
                "  domaintune eval --model embedded --few-shot 3 --data prepared/test.jsonl -o runs/eval-3shot")
    recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--adapter", metavar="RUN_DIR", help="a run folder (or adapter/model folder) from `domaintune train`")
    p.add_argument("--template", help=field_help(ModelConfig, "template"))
    p.add_argument("--data", help=field_help(EvalConfig, "data"))
    p.add_argument("-o", "--output-dir", help=field_help(EvalConfig, "output_dir"))
    p.add_argument("--few-shot", type=int, help=field_help(EvalConfig, "few_shot"))
    p.add_argument("--label-field", help=field_help(EvalConfig, "label_field"))
    p.add_argument("--max-new-tokens", type=int, help=field_help(EvalConfig, "max_new_tokens"))
    p.add_argument("--max-examples", type=int, help=field_help(EvalConfig, "max_examples"))
    p.add_argument("--general", help=field_help(EvalConfig, "general"))


def run_eval(a: argparse.Namespace) -> int:
    from domaintune import api

    flags: dict[str, Any] = {}
    for key, value in (("data", a.data), ("output_dir", a.output_dir), ("few_shot", a.few_shot),
                       ("label_field", a.label_field), ("max_new_tokens", a.max_new_tokens),
                       ("max_examples", a.max_examples), ("general", a.general)):
        put(flags, key, value)
    model = {"template": a.template} if a.template else {}
    recipe = load_recipe(a.config, a.set, base={"eval": flags, "model": model})
    result, paths = api.evaluate(recipe, adapter=a.adapter, model=a.model, step=_say)
    rows = [{"metric": k, "a": v} for k, v in result.report["metrics"].items()]
    print(api.metrics_table(rows, a_name="value", b_name="").rstrip())
    print(f"report: {paths['html']}")
    return 0


def _say(step: str) -> None:
    print(f"· {step}", flush=True)


def build_compare(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune compare runs/eval-base runs/eval-tuned -o runs/compare\n"
                "  domaintune compare base runs/demo --data prepared/test.jsonl --label-field label -o runs/compare")
    p.add_argument("a", metavar="A", help="an evaluation folder, 'base', or a run folder")
    p.add_argument("b", metavar="B", help="an evaluation folder, 'base', or a run folder")
    recipe_args(p)
    p.add_argument("--data", help=field_help(EvalConfig, "data"))
    p.add_argument("--label-field", help=field_help(EvalConfig, "label_field"))
    p.add_argument("-o", "--output-dir", default="runs/compare", help="where compare.json and compare.html go")


def run_compare(a: argparse.Namespace) -> int:
    from domaintune import api

    flags: dict[str, Any] = {}
    put(flags, "data", a.data)
    put(flags, "label_field", a.label_field)
    result = api.compare(load_recipe(a.config, a.set, base={"eval": flags}), a.a, a.b, output_dir=a.output_dir)
    names = (result["a"]["name"], result["b"]["name"])
    print(api.compare_table(result, names[0], names[1]).rstrip())
    for test in result["tests"].values():
        print(test["verdict"])
    print(f"report: {result['html']}")
    return 0


def build_review(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune review export runs/eval-base runs/eval-tuned -o review/\n"
                "  domaintune review import review/alice.csv review/bob.csv --key review/review_key.json")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("paths", nargs="+", help="export: two evaluation folders; import: filled review sheets (CSV)")
    p.add_argument("-o", "--output-dir", default="review", help="export: where the sheet goes")
    p.add_argument("--key", help="import: the review_key.json written by export")
    p.add_argument("--limit", type=int, help="export: only the first N examples")
    p.add_argument("--seed", type=int, default=0, help="export: seed of the blinded order")


def run_review(a: argparse.Namespace) -> int:
    from domaintune import api

    if a.action == "export":
        if len(a.paths) != 2:
            raise UserError("review export needs two evaluation folders", hint="domaintune review export A B -o DIR")
        paths = api.review_export(a.paths[0], a.paths[1], a.output_dir, seed=a.seed, limit=a.limit)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if not a.key:
        raise UserError("review import needs --key", hint="pass the review_key.json that review export wrote")
    report = api.review_import(a.paths, a.key)
    print(report["preference"].get("verdict", report["preference"]))
    for side, means in report["means"].items():
        print(f"{side}: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    return 0


def build_demo(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune demo -o demo_out/\n  domaintune demo --quick -o /tmp/demo"
    p.add_argument("-o", "--output-dir", default="demo_out", help="where the demo writes everything")
    p.add_argument("--quick", action="store_true", help="a CI-sized run: the same steps on small numbers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the demo recipe")


def run_demo(a: argparse.Namespace) -> int:
    from domaintune import api
    from domaintune.cli.data import print_prepare_summary

    out = api.demo(a.output_dir, quick=a.quick, overrides=a.set, step=lambda s: print(f"\n== {s}", flush=True))
    print_prepare_summary(out["prepare"])
    for name, result in out["compare"].items():
        print(f"\n{name} vs tuned")
        print(api.compare_table(result, name, "tuned").rstrip())
        for metric in ("accuracy", "exact_match"):
            if metric in result["tests"]:
                print(result["tests"][metric]["verdict"])
    forgetting = out["evals"]["tuned"].get("forgetting")
    if forgetting:
        print(api.forgetting_summary(forgetting))
    print("\n" + "\n".join(f"{k}: {Path(v)}" for k, v in out["paths"].items()))
    return 0
