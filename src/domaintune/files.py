"""Every file we write is written whole or not at all: into a temporary sibling, then renamed.

A crash, Ctrl-C or a full disk halfway through leaves the previous file as it was (or none), never
a truncated one beside it. The rename is atomic on POSIX filesystems (and on NTFS for one file).

    write_text_atomic(run_dir / "recipe.resolved.yaml", text)
    write_json_atomic(run_dir / "labels.json", ["A", "B"])
"""

from __future__ import annotations

import json
import os
import tempfile
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


def _read_umask() -> int:
    current = os.umask(0o022)  # read once, at import (os.umask is process-wide: never from a thread)
    os.umask(current)
    return current


_UMASK = _read_umask()
