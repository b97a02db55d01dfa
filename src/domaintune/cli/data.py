"""The data commands: prepare, inspect, agree, validate, recipe."""

from __future__ import annotations

import argparse
from typing import Any

from domaintune.cli.common import kv_list, put, recipe_args
from domaintune.config import (DedupConfig, InputSpec, MixConfig, ModelConfig, PrepareConfig, SplitConfig, TrainConfig,
                               field_help, load_recipe)
from domaintune.errors import UserError

PREPARE_EXAMPLES = """examples:
  domaintune prepare cases.jsonl -o prepared/
  domaintune prepare --input domain=cases.jsonl --input general=chat.csv --mix general=0.3,domain=0.7 -o prepared/
  domaintune prepare qa.csv --columns question=instruction,answer=output --stratify-by label -o prepared/
  domaintune prepare --config recipe.yaml --set prepare.dedup.threshold=0.9
"""


def build_prepare(p: argparse.ArgumentParser) -> None:
    p.epilog = PREPARE_EXAMPLES
    p.add_argument("files", nargs="*", metavar="INPUT", help="input files (source name = file stem)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH", help="an input tagged with a source name")
    p.add_argument("-o", "--output-dir", help=field_help(PrepareConfig, "output_dir"))
    recipe_args(p)
    p.add_argument("--format", help=field_help(InputSpec, "format"))
    p.add_argument("--file-type", help=field_help(InputSpec, "file_type"))
    p.add_argument("--columns", type=kv_list, metavar="FROM=TO,...", help=field_help(InputSpec, "columns"))
    p.add_argument("--text-unit", help=field_help(InputSpec, "text_unit"))
    p.add_argument("--model", help=field_help(ModelConfig, "name") + " 'none' counts words instead of tokens.")
    p.add_argument("--template", help=field_help(ModelConfig, "template"))
    p.add_argument("--max-tokens", type=int, help=field_help(PrepareConfig, "max_tokens"))
    p.add_argument("--mix", type=kv_list, metavar="SRC=R,...", help=field_help(MixConfig, "ratios"))
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
    put(prep, "output_dir", a.output_dir)
    put(prep, "max_tokens", a.max_tokens)
    put(prep, "label_field", a.label_field)
    put(prep, "terms", a.terms)
    put(prep, "role_injection", a.role_injection)
    put(prep, "keep_last_turns", a.keep_last_turns)
    put(prep, "seed", a.seed)
    put(prep, "mix", {k: v for k, v in (("ratios", a.mix), ("strategy", a.mix_strategy)) if v is not None} or None)
    split = _split_flag(a.split)
    if a.stratify_by:
        split["stratify_by"] = a.stratify_by
    put(prep, "split", split or None)
    dedup = {k: v for k, v in (("against", a.against), ("threshold", a.near_threshold)) if v is not None}
    if a.no_near_dedup:
        dedup["near"] = False
    put(prep, "dedup", dedup or None)
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

def run_prepare(a: argparse.Namespace) -> int:
    from domaintune import api

    recipe = load_recipe(a.config, a.set, base=_prepare_flags(a))
    report = api.prepare(recipe, progress=not a.quiet)
    if not a.quiet:
        print_prepare_summary(report)
    return 0


def print_prepare_summary(report: dict[str, Any]) -> None:
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





def build_agree(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune agree labels.csv\n  domaintune agree labels.csv --threshold 0.7"
    p.add_argument("labels", metavar="LABELS.csv", help="long form (item,rater,label) or wide form (item,rater1,rater2,...)")
    p.add_argument("--threshold", type=float, default=0.6, help="kappa needed to pass (default: 0.6)")


def run_agree(a: argparse.Namespace) -> int:
    from domaintune import api

    report = api.agree(a.labels, a.threshold)
    print(report.to_markdown())
    return 0 if report.passed else 1


def build_validate(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune validate recipe.yaml\n  domaintune validate recipe.yaml --set prepare.seed=3"
    p.add_argument("config", metavar="RECIPE.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")


def run_validate(a: argparse.Namespace) -> int:
    load_recipe(a.config, a.set)
    print(f"{a.config}: ok")
    return 0


def build_kb(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune kb build prepared/ -o kb/                 # the training pairs\n"
                "  domaintune kb build prepared/ codes.csv guide.md -o kb/  # plus a code list and a document\n"
                "  domaintune kb search kb/ \"chest pain after exercise\" -k 3")
    p.add_argument("action", choices=["build", "search"])
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="build: SOURCES (prepared folder, .jsonl, .csv/.tsv, .txt/.md); search: KB QUERY")
    p.add_argument("-o", "--output-dir", help="the knowledge-base folder to write (build)")
    p.add_argument("-k", type=int, default=5, help="entries to show (search; default 5)")


def run_kb(a: argparse.Namespace) -> int:
    from domaintune import api

    if a.action == "build":
        if not a.output_dir:
            raise UserError("kb build needs -o KB_FOLDER", hint="e.g. domaintune kb build prepared/ -o kb/")
        kb = api.kb_build(a.args, a.output_dir)
        print(f"{len(kb):,} entries from {len(a.args)} source(s) -> {kb.folder}  (sha256 {kb.sha256[:12]})")
        return 0
    if len(a.args) != 2:
        raise UserError("kb search needs KB_FOLDER and QUERY", hint='e.g. domaintune kb search kb/ "chest pain"')
    for hit in api.kb_search(a.args[0], a.args[1], a.k):
        answer = f"  ->  {hit.entry.answer}" if hit.entry.answer else ""
        print(f"{hit.score:7.2f}  [{hit.entry.id}] {' '.join(hit.entry.text.split())[:100]}{answer}")
    return 0


def build_recipe(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune recipe ls\n  domaintune recipe cp cpu_demo my_recipe.yaml"
    p.add_argument("action", choices=["ls", "cp"])
    p.add_argument("name", nargs="?", help="recipe name (for cp)")
    p.add_argument("dest", nargs="?", default=".", help="destination file or folder (for cp)")


def run_recipe(a: argparse.Namespace) -> int:
    from domaintune import api

    if a.action == "ls":
        print("\n".join(api.recipe_names()))
        return 0
    if not a.name:
        raise UserError("recipe cp needs a NAME", hint="see `domaintune recipe ls`")
    print(api.copy_recipe(a.name, a.dest))
    return 0
