"""Checks before a run resumes or writes: the recipe has not changed, and the disk has room.

`check_resume_recipe` compares the recipe saved with a checkpoint (or a finished stage) with the
one being resumed, key by key; `check_free_disk` refuses a write the filesystem cannot hold.

    check_resume_recipe(saved_yaml, current_yaml, force=False)   # UserError listing changed keys
    check_free_disk(run_dir, needed_bytes)                        # UserError with the space missing
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from domaintune.errors import UserError

log = logging.getLogger(__name__)

# Room for the JSON files and for filesystem overhead beyond the tensor bytes.
_DISK_MARGIN_BYTES = 64 * 2**20


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def recipe_diff(saved_yaml: str, current_yaml: str) -> list[str]:
    """Keys that differ between two recipes, as ``"a.b: old -> new"`` lines, sorted by key."""
    old, new = _flatten(yaml.safe_load(saved_yaml) or {}), _flatten(yaml.safe_load(current_yaml) or {})
    absent = "(absent)"
    return [f"{k}: {old.get(k, absent)!r} -> {new.get(k, absent)!r}"
            for k in sorted(old.keys() | new.keys()) if old.get(k, absent) != new.get(k, absent)]


def check_resume_recipe(saved_yaml: str, current_yaml: str, force: bool) -> None:
    """Refuse to resume with a recipe that differs from the one saved with the checkpoint.

    Args:
        saved_yaml: recipe.resolved.yaml from the checkpoint.
        current_yaml: the resolved recipe of the run being resumed.
        force: resume anyway (the differences are logged as a warning).

    Raises:
        UserError: listing the differing keys, when the recipes differ and ``force`` is False.
    """
    diffs = recipe_diff(saved_yaml, current_yaml)
    if not diffs:
        return
    shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
    if force:
        log.warning("resuming with a changed recipe (forced): %s", shown)
        return
    raise UserError(f"the recipe changed since the checkpoint was saved: {shown}",
                    hint="resume with the original recipe (recipe.resolved.yaml in the checkpoint), "
                         "or pass --force to resume with the changed one")


def check_free_disk(path: Path, needed_bytes: int) -> None:
    """Raise when the filesystem holding ``path`` has less free space than needed plus a margin.

    Args:
        path: a file or folder (the nearest existing parent is measured if it does not exist yet).
        needed_bytes: bytes about to be written.

    Raises:
        UserError: with the space needed and available, and how to free it.
    """
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    want = needed_bytes + max(_DISK_MARGIN_BYTES, needed_bytes // 20)
    if free < want:
        raise UserError(f"not enough free disk space: {_gib(free)} free, {_gib(want)} needed (with margin)",
                        file=str(where), hint=f"free at least {_gib(want - free)} there, or keep fewer "
                                              "checkpoints (keep_last)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
