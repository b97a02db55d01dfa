"""Write an output folder whole or not at all: fill a temporary sibling, then rename it into place.

A run that fails halfway (bad input, full disk, Ctrl-C) removes its temporary folder and leaves
the previous outputs as they were, so no reader ever sees new splits beside an old report or a
truncated rejects file. Files in the old folder that the writer does not own (a note, a KB built
into it) are moved into the new one.

    with staged_folder(Path("prepared"), owned={"train.jsonl", "report.json"}) as tmp:
        (tmp / "train.jsonl").write_text(...)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from domaintune.errors import UserError
from domaintune.files import publish_folder


@contextmanager
def staged_folder(target: Path, owned: Collection[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target` that replaces `target` when the block ends.

    Args:
        target: the output folder (created if missing, replaced if present).
        owned: names of the entries the writer produces; any other entry of the old folder is kept.

    Yields:
        The temporary folder to write into.

    Raises:
        UserError: `target` is a file, the current directory or one of its parents.
    """
    target = Path(os.path.realpath(target))
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _swap(tmp, target, owned)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError("the output folder is a file", file=str(target), hint="give a folder path with -o")
    cwd = Path(os.path.realpath(Path.cwd()))
    if target == cwd or target in cwd.parents:
        raise UserError("the output folder holds the current directory; it is replaced whole on every run",
                        file=str(target), hint="give a folder of its own, e.g. -o prepared/")


def _swap(tmp: Path, target: Path, owned: Collection[str]) -> None:
    publish_folder(tmp, target, keep=lambda name: name not in owned)
