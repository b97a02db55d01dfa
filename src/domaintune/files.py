"""Every file we write is written whole or not at all: into a temporary sibling, then renamed.

A crash, Ctrl-C or a full disk halfway through leaves the previous file as it was (or none), never
a truncated one beside it. The rename is atomic on POSIX filesystems (and on NTFS for one file).

    write_text_atomic(run_dir / "recipe.resolved.yaml", text)
    write_json_atomic(run_dir / "labels.json", ["A", "B"])
    with atomic_path(run_dir / "ewc.safetensors") as tmp:    # for writers that take a path
        save_file(tensors, str(tmp))
    with atomic_folder(run_dir / "adapter") as tmp:          # a folder, replaced whole
        model.save_pretrained(tmp)

This module is the only place that renames a finished file or folder into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place.

    Args:
        path: the file (its folder is created).
        data: the whole content.
        mode: permission bits (e.g. 0o600 for files holding personal data); default: the umask's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> Path:
    """`write_bytes_atomic` for UTF-8 text (lines end in "\\n" as given)."""
    return write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    """`value` as UTF-8 JSON (non-ASCII kept) ending in a newline, written whole."""
    return write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=indent) + "\n")


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is synced and renamed onto `path`.

    On an error (or Ctrl-C) inside the block the temporary file is removed and `path` is left as
    it was. `mode`: as in `write_bytes_atomic`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder that replaces `target` whole when the block ends.

    On an error inside the block the temporary folder is removed and `target` keeps what it
    held; readers never see a half-written folder under `target`'s name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        publish_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_folder(tmp: str | Path, target: str | Path, keep: Callable[[str], bool] | None = None) -> Path:
    """Rename the finished folder `tmp` to `target`; an existing `target` is moved aside first and
    removed once the new one is in place (if the second rename fails, the old one is put back).
    Entries of the old folder whose name `keep` accepts (files the writer does not own, such as
    a user's note) are moved into the new one before the old one is removed.

    Returns:
        `target`.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return target
    aside = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
    os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    fsync_dir(target.parent)
    if keep is not None:  # until these moves are done the kept entries sit in `aside`, removed only after
        for entry in aside.iterdir():
            if keep(entry.name) and not (target / entry.name).exists():
                os.replace(entry, target / entry.name)
    shutil.rmtree(aside, ignore_errors=True)
    return target


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    current = os.umask(0o022)  # read once, at import (os.umask is process-wide: never from a thread)
    os.umask(current)
    return current


_UMASK = _read_umask()
