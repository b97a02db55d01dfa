"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse
from typing import Any


def kv_list(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{item}'")
        pairs[key.strip()] = value.strip()
    return pairs


def recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE.yaml", help="a recipe file (see `domaintune recipe ls`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set prepare.seed=3 (repeatable)")


def put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def kv_pair(text: str) -> tuple[str, str]:
    """`NAME=VALUE` as a pair (argparse type)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got '{text}'")
    return name.strip(), value.strip()
