"""The `domaintune` command: parse, call one `api` function, print. Nothing imports this module.

Every `UserError` becomes one line on stderr and exit code 2, with no traceback. Heavy libraries
(torch, transformers) are imported inside the commands, so `--help` and `validate` are instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from domaintune import __version__
from domaintune.config import (METHOD_NAMES, DedupConfig, InputSpec, MixConfig, ModelConfig, PrepareConfig,
                               SplitConfig, TrainConfig, field_help, load_recipe)
from domaintune.errors import EXIT_USER_ERROR, UserError

PREPARE_EXAMPLES = """examples:
  domaintune prepare cases.jsonl -o prepared/
  domaintune prepare --input domain=cases.jsonl --input general=chat.csv --mix general=0.3,domain=0.7 -o prepared/
  domaintune prepare qa.csv --columns question=instruction,answer=output --stratify-by label -o prepared/
  domaintune prepare --config recipe.yaml --set prepare.dedup.threshold=0.9
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.run(args) or 0
    except UserError as err:
        print(f"domaintune: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("domaintune: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domaintune", description="Turn a general chat model into a domain specialist with your own data.",
        epilog="examples:\n  domaintune demo -o demo_out/\n  domaintune prepare data.jsonl -o prepared/\n"
               "  domaintune recipe ls", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"domaintune {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, help_text, build, run in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        build(p)
        p.set_defaults(run=run)
    return parser


def _kv_list(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{item}'")
        pairs[key.strip()] = value.strip()
    return pairs


# --- prepare -----------------------------------------------------------------------------------


def _build_prepare(p: argparse.ArgumentParser) -> None:
    p.epilog = PREPARE_EXAMPLES
    p.add_argument("files", nargs="*", metavar="INPUT", help="input files (source name = file stem)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH", help="an input tagged with a source name")
    p.add_argument("-o", "--output-dir", help=field_help(PrepareConfig, "output_dir"))
    _recipe_args(p)
    p.add_argument("--format", help=field_help(InputSpec, "format"))
    p.add_argument("--file-type", help=field_help(InputSpec, "file_type"))
    p.add_argument("--columns", type=_kv_list, metavar="FROM=TO,...", help=field_help(InputSpec, "columns"))
    p.add_argument("--text-unit", help=field_help(InputSpec, "text_unit"))
    p.add_argument("--model", help=field_help(ModelConfig, "name") + " 'none' counts words instead of tokens.")
    p.add_argument("--template", help=field_help(ModelConfig, "template"))
    p.add_argument("--max-tokens", type=int, help=field_help(PrepareConfig, "max_tokens"))
    p.add_argument("--mix", type=_kv_list, metavar="SRC=R,...", help=field_help(MixConfig, "ratios"))
    p.add_argument("--mix-strategy", help=field_help(MixConfig, "strategy"))
    p.add_argument("--split", metavar="TRAIN,VAL,TEST", help="shares for the three splits (default: 0.8,0.1,0.1)")
    p.add_argument("--stratify-by", help=field_help(SplitConfig, "stratify_by"))
    p.add_argument("--label-field", help=field_help(PrepareConfig, "label_field"))
    p.add_argument("--terms", help=field_help(PrepareConfig, "terms"))
    p.add_argument("--against", nargs="+", metavar="FILE", help=field_help(DedupConfig, "against"))
    p.add_argument("--near-threshold", type=float, help=field_help(DedupConfig, "threshold"))
    p.add_argument("--no-near-dedup", action="store_true", help="skip near-duplicate detection (exact dedup stays)")
    p.add_argument("--no-pii", action="store_true", help="do not mask personal data")
    p.add_argument("--role-injection", help=field_help(PrepareConfig, "role_injection"))
    p.add_argument("--keep-last-turns", type=int, help=field_help(PrepareConfig, "keep_last_turns"))
    p.add_argument("--seed", type=int, help=field_help(PrepareConfig, "seed"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE.yaml", help="a recipe file (see `domaintune recipe ls`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set prepare.seed=3 (repeatable)")


def _prepare_flags(a: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as a partial recipe; they win over the recipe file."""
    prep: dict[str, Any] = {}
    spec = {k: v for k, v in (("format", a.format), ("file_type", a.file_type), ("columns", a.columns),
                              ("text_unit", a.text_unit)) if v is not None}
    inputs = [{"path": f, **spec} for f in a.files]
    for item in a.input:
        name, sep, path = item.partition("=")
        inputs.append({"name": name, "path": path, **spec} if sep else {"path": item, **spec})
    if inputs:
        prep["inputs"] = inputs
    _put(prep, "output_dir", a.output_dir)
    _put(prep, "max_tokens", a.max_tokens)
    _put(prep, "label_field", a.label_field)
    _put(prep, "terms", a.terms)
    _put(prep, "role_injection", a.role_injection)
    _put(prep, "keep_last_turns", a.keep_last_turns)
    _put(prep, "seed", a.seed)
    _put(prep, "mix", {k: v for k, v in (("ratios", a.mix), ("strategy", a.mix_strategy)) if v is not None} or None)
    split = _split_flag(a.split)
    if a.stratify_by:
        split["stratify_by"] = a.stratify_by
    _put(prep, "split", split or None)
    dedup = {k: v for k, v in (("against", a.against), ("threshold", a.near_threshold)) if v is not None}
    if a.no_near_dedup:
        dedup["near"] = False
    _put(prep, "dedup", dedup or None)
    if a.no_pii:
        prep["pii"] = {"enabled": False}
    model = {k: v for k, v in (("name", a.model), ("template", a.template)) if v is not None}
    return {"prepare": prep, **({"model": model} if model else {})}


def _split_flag(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    parts = text.split(",")
    if len(parts) != 3:
        raise UserError(f"--split needs three shares TRAIN,VAL,TEST, got '{text}'", hint="e.g. --split 0.8,0.1,0.1")
    return dict(zip(("train", "val", "test"), parts))


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _run_prepare(a: argparse.Namespace) -> int:
    from domaintune import api

    recipe = load_recipe(a.config, a.set, base=_prepare_flags(a))
    report = api.prepare(recipe, progress=not a.quiet)
    if not a.quiet:
        _print_prepare_summary(report)
    return 0


def _print_prepare_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = report["totals"]
    table = Table(title=f"prepare: {t['rows_in']} rows in, every row accounted for: {t['balanced']}")
    for col in ("source", "rows_in", "rejected", "duplicates", "train", "val", "test"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for source, row in report["per_source"].items():
        table.add_row(source, *(str(row[c]) for c in ("rows_in", "rejected", "duplicates", "train", "val", "test")))
    console = Console()
    console.print(table)
    if report["reject_reasons"]:
        console.print("rejects: " + ", ".join(f"{k} {v}" for k, v in report["reject_reasons"].items()))
    if report["pii"]:
        console.print("masked: " + ", ".join(f"{k} {v}" for k, v in report["pii"].items()))
    tok = report["tokens"]
    if tok.get("count"):
        console.print(f"length ({tok['unit']}): p50 {tok['p50']:.0f}, p95 {tok['p95']:.0f}, max {tok['max']}")
    console.print(f"report: {report['output_dir']}/report.md  ({report['timing']['rows_per_s']} rows/s)")


# --- inspect ------------------------------------------------------------------------------


def _build_train(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune train --config cpu_demo.yaml\n"
                "  domaintune train --data prepared/ --method lora -o runs/lora --set train.max_steps=100\n"
                "  domaintune train --config cpu_demo.yaml --resume")
    _recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--data", help=field_help(TrainConfig, "data_dir"))
    p.add_argument("--method", choices=METHOD_NAMES, help="fine-tuning method (options via --set train.method.KEY=V)")
    p.add_argument("-o", "--output-dir", help=field_help(TrainConfig, "output_dir"))
    p.add_argument("--max-steps", type=int, help=field_help(TrainConfig, "max_steps"))
    p.add_argument("--epochs", type=float, help=field_help(TrainConfig, "epochs"))
    p.add_argument("--lr", type=float, help=field_help(TrainConfig, "learning_rate"))
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--force", action="store_true", help="resume even though the recipe changed")


def _run_train(a: argparse.Namespace) -> int:
    from domaintune import api

    flags: dict[str, Any] = {}
    for key, value in (("data_dir", a.data), ("output_dir", a.output_dir), ("max_steps", a.max_steps),
                       ("epochs", a.epochs), ("learning_rate", a.lr)):
        _put(flags, key, value)
    if a.method:
        flags["method"] = {"method": a.method}
    base = {"train": flags, **({"model": {"name": a.model}} if a.model else {})}
    result = api.train(load_recipe(a.config, a.set, base=base), resume=a.resume, force=a.force)
    if result.best_val_loss is None or result.base_val_loss is None:   # no validation split
        print(f"run: {result.run_dir}  steps {result.steps}  (no validation loss)")
    else:
        print(f"run: {result.run_dir}  steps {result.steps}  val loss {result.base_val_loss:.4f} (base) -> "
              f"{result.best_val_loss:.4f} (best, step {result.best_step})")
    return 0


def _build_inspect(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune inspect prepared/train.jsonl\n  domaintune inspect data.jsonl --template deepseek_r1 -n 5"
    p.add_argument("data", metavar="DATA.jsonl", help="a prepared split")
    _recipe_args(p)
    p.add_argument("--model", help=field_help(ModelConfig, "name"))
    p.add_argument("--template", help=field_help(ModelConfig, "template"))
    p.add_argument("-n", type=int, default=3, help="examples to show (default: 3)")


def _run_inspect(a: argparse.Namespace) -> int:
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


# --- agree, validate, recipe -------------------------------------------------------------------


def _build_agree(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune agree labels.csv\n  domaintune agree labels.csv --threshold 0.7"
    p.add_argument("labels", metavar="LABELS.csv", help="long form (item,rater,label) or wide form (item,rater1,rater2,...)")
    p.add_argument("--threshold", type=float, default=0.6, help="kappa needed to pass (default: 0.6)")


def _run_agree(a: argparse.Namespace) -> int:
    from domaintune import api

    report = api.agree(a.labels, a.threshold)
    print(report.to_markdown())
    return 0 if report.passed else 1


def _build_validate(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune validate recipe.yaml\n  domaintune validate recipe.yaml --set prepare.seed=3"
    p.add_argument("config", metavar="RECIPE.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")


def _run_validate(a: argparse.Namespace) -> int:
    load_recipe(a.config, a.set)
    print(f"{a.config}: ok")
    return 0


def _build_recipe(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune recipe ls\n  domaintune recipe cp cpu_demo my_recipe.yaml"
    p.add_argument("action", choices=["ls", "cp"])
    p.add_argument("name", nargs="?", help="recipe name (for cp)")
    p.add_argument("dest", nargs="?", default=".", help="destination file or folder (for cp)")


def _run_recipe(a: argparse.Namespace) -> int:
    from domaintune import api

    if a.action == "ls":
        print("\n".join(api.recipe_names()))
        return 0
    if not a.name:
        raise UserError("recipe cp needs a NAME", hint="see `domaintune recipe ls`")
    print(api.copy_recipe(a.name, a.dest))
    return 0


def _build_demo(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune demo -o demo_out/"
    p.add_argument("-o", "--output-dir", default="demo_out", help="where the demo writes everything")


def _run_demo(a: argparse.Namespace) -> int:
    from domaintune import api

    report = api.demo(a.output_dir)
    _print_prepare_summary(report["prepare"])
    return 0


_COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("prepare", "Clean, deduplicate, mask, mix and split raw data into training data.", _build_prepare, _run_prepare),
    ("train", "Fine-tune a model on prepared data (LoRA, QLoRA, prefix, prompt, IA3, adapter, full, freeze).",
     _build_train, _run_train),
    ("inspect", "Show what training sees: rendered examples with trained tokens highlighted.", _build_inspect,
     _run_inspect),
    ("agree", "Annotation agreement: Cohen's / Fleiss' kappa with a pass/fail threshold.", _build_agree, _run_agree),
    ("validate", "Check a recipe file: every error at once, with file and line.", _build_validate, _run_validate),
    ("recipe", "List or copy the recipes shipped with this version.", _build_recipe, _run_recipe),
    ("demo", "The whole loop on the embedded model and the bundled medical-coding data.", _build_demo, _run_demo),
]
