"""The `domaintune` command: parse, call one `api` function, print. Nothing imports this package.

Every `UserError` becomes one line on stderr and exit code 2, with no traceback. Heavy libraries
(torch, transformers) are imported inside the commands, so `--help` and `validate` are instant.
Each module holds a few commands as `build_<name>` (arguments, with runnable examples) and
`run_<name>` (one `api` call, then printing).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from domaintune import __version__
from domaintune.cli import data, deploy, evaluation, monitor, training
from domaintune.errors import EXIT_USER_ERROR, UserError

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



_COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("prepare", "Clean, deduplicate, mask, mix and split raw data into training data.", data.build_prepare,
     data.run_prepare),
    ("train", "Fine-tune a model on prepared data (LoRA, QLoRA, prefix, prompt, IA3, adapter, full, freeze, distill).",
     training.build_train, training.run_train),
    ("inspect", "Show what training sees: rendered examples with trained tokens highlighted.", training.build_inspect,
     training.run_inspect),
    ("eval", "Evaluate a model or adapter on held-out data: metrics, latency, forgetting, leaks, HTML report.",
     evaluation.build_eval, evaluation.run_eval),
    ("tune", "Search learning rate, epochs, LoRA rank and batch size with Optuna under a time budget.",
     training.build_tune, training.run_tune),
    ("compare", "Compare two models or evaluations with paired significance tests.", evaluation.build_compare,
     evaluation.run_compare),
    ("review", "Blinded human review sheets: export for raters, import their scores.", evaluation.build_review,
     evaluation.run_review),
    ("export", "Export a run: merged HF model, PEFT adapter, GGUF (f16/q8_0) or int8, with parity checks.",
     deploy.build_export, deploy.run_export),
    ("serve", "Serve a model and its adapters over an OpenAI-compatible HTTP API.", deploy.build_serve,
     deploy.run_serve),
    ("chat", "Chat with a model or adapter in the terminal (streamed).", deploy.build_chat, deploy.run_chat),
    ("monitor", "Production traffic (serve --store): drift alarms, shadow agreement, feedback export, promote.",
     monitor.build_monitor, monitor.run_monitor),
    ("agree", "Annotation agreement: Cohen's / Fleiss' kappa with a pass/fail threshold.", data.build_agree,
     data.run_agree),
    ("validate", "Check a recipe file: every error at once, with file and line.", data.build_validate,
     data.run_validate),
    ("recipe", "List or copy the recipes shipped with this version.", data.build_recipe, data.run_recipe),
    ("kb", "Build or search a knowledge base (training pairs, tables, documents) for retrieval.", data.build_kb,
     data.run_kb),
    ("demo", "The whole loop on the embedded model and the bundled medical-coding data.", evaluation.build_demo,
     evaluation.run_demo),
]
