"""Read raw user data files (jsonl, json, csv, tsv, parquet, txt) into rows that remember where they came from.

`read_rows` yields one `RawRow` per physical input record, with its source name, file, 1-based
line (and last line) and raw text, and never drops a record silently: a record that cannot be
decoded or parsed still comes out, with ``obj=None`` and an error code from
`schema.REJECT_REASONS`, so `prepare` can write it to the rejects file. Blank lines are not rows.
With `tally`, each file read to its end also reports its physical size (`rows.FileTally`), which
`rejects.Ledger` reconciles against the rows. Reading streams (bounded memory) for jsonl, csv,
tsv, parquet and txt by line or paragraph; a .json file or a whole .txt file is read at once.
Files ending in .gz are decompressed on the fly; a truncated or corrupt one, or a read error, is
one `UserError`. JSON and JSON Lines live in `read_json.py`, CSV/TSV and Parquet in `read_table.py`.

Example:
    >>> for row in read_rows("data/train.jsonl", source="train"):   # doctest: +SKIP
    ...     print(row.line, row.obj or row.error)
"""

from __future__ import annotations

import gzip
import zlib
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from domaintune.data.read_json import read_json, read_jsonl
from domaintune.data.read_table import read_delimited, read_parquet
from domaintune.data.rows import FileTally, RawRow, ReadOptions, lines, open_binary
from domaintune.errors import UserError

__all__ = ["FILE_TYPES", "TEXT_UNITS", "FileTally", "RawRow", "detect_file_type", "read_rows"]

FILE_TYPES = ("jsonl", "json", "csv", "tsv", "parquet", "txt")
TEXT_UNITS = ("file", "paragraph", "line")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".md": "txt", ".text": "txt"}


def detect_file_type(path: str) -> str:
    """Name a file's type from its extension (a trailing .gz is looked through).

    Args:
        path: the file path.

    Returns:
        One of `FILE_TYPES`.

    Raises:
        UserError: the extension is not known.

    Example:
        >>> detect_file_type("data/chat.ndjson.gz")
        'jsonl'
    """
    file_type = _type_of(path)
    if file_type is None:
        raise UserError("cannot tell the file type from the extension", file=path,
                        hint=f"use one of {' '.join(_EXTENSIONS)} or set --file-type to one of "
                             f"{', '.join(FILE_TYPES)}")
    return file_type


def read_rows(path: str, source: str, file_type: str = "auto", columns: Mapping[str, str] | None = None,
              text_unit: str = "file", tally: Callable[[FileTally], None] | None = None) -> Iterator[RawRow]:
    """Stream the rows of a data file (or of every data file in a directory).

    Arguments are checked when called, not when iteration starts, so a missing file fails early.

    Args:
        path: a data file, or a directory (its files with known extensions are read in sorted order;
            with an explicit `file_type`, only files of that type).
        source: the source name stamped on every row.
        file_type: "auto" (from the extension) or one of `FILE_TYPES`.
        columns: renames the file's columns/keys to canonical names, e.g. {"question": "instruction"}.
        text_unit: for txt files, what one row is: "file", "paragraph" (blank-line separated) or "line".
        tally: called with each file's `FileTally` once the file has been read to its end.

    Returns:
        An iterator of `RawRow`, in file order.

    Raises:
        UserError: the path does not exist, the type or text unit is unknown, or a mapped column is
            missing; while iterating, a file cannot be read (a truncated .gz, an I/O error).

    Example:
        >>> rows = read_rows("qa.csv", "qa", columns={"q": "instruction", "a": "output"})  # doctest: +SKIP
    """
    if file_type != "auto" and file_type not in FILE_TYPES:
        raise UserError(f"unknown file type '{file_type}'", file=path, hint=f"use auto or one of {', '.join(FILE_TYPES)}")
    if text_unit not in TEXT_UNITS:
        raise UserError(f"unknown text unit '{text_unit}'", file=path, hint=f"use one of {', '.join(TEXT_UNITS)}")
    files = [(f, file_type if file_type != "auto" else detect_file_type(f)) for f in _expand(path, file_type)]
    opts = ReadOptions(dict(columns or {}), text_unit, tally)
    return chain.from_iterable(_guarded(_READERS[ft], f, source, opts) for f, ft in files)


def _guarded(reader: Callable[[str, str, ReadOptions], Iterator[RawRow]], path: str, source: str,
             opts: ReadOptions) -> Iterator[RawRow]:
    """The reader's rows; a file that cannot be read becomes one UserError instead of a traceback."""
    try:
        yield from reader(path, source, opts)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"the gzip data is truncated or corrupt ({err})", file=path,
                        hint="copy or download the file again; `gzip -t FILE` checks it") from None
    except OSError as err:
        raise UserError(f"cannot read the file ({err.strerror or err})", file=path,
                        hint="check that the file is readable and the disk is healthy") from None


def _expand(path: str, file_type: str) -> list[str]:
    p = Path(path)
    if p.is_file():
        return [path]
    if not p.is_dir():
        raise UserError("input file not found", file=path,
                        hint="check the path; a relative path starts at the directory you run domaintune from")
    found = [str(f) for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")
             and _type_of(str(f)) in (FILE_TYPES if file_type == "auto" else (file_type,))]
    if not found:
        raise UserError("no data files in this directory", file=path,
                        hint=f"put files with extensions {' '.join(_EXTENSIONS)} in it")
    return found


def _type_of(path: str) -> str | None:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _EXTENSIONS.get(suffixes[-1]) if suffixes else None


def _read_txt(path: str, source: str, opts: ReadOptions) -> Iterator[RawRow]:
    with open_binary(path) as f:
        numbered = enumerate(lines(f), 1)
        units: Iterable[tuple[int, int, bytes]]
        if opts.text_unit == "file":
            body = list(numbered)
            units = [(1, len(body), b"".join(b for _, b in body))] if body else []
        elif opts.text_unit == "paragraph":
            units = _paragraphs(numbered)
        else:
            units = ((n, n, b) for n, b in numbered)
        count = covered = 0
        for line, last, data in units:
            count = last
            if not data.strip():
                continue
            covered += last - line + 1
            yield _txt_row(source, path, line, last, data)
    opts.report(path, count, count - covered)


def _txt_row(source: str, path: str, line: int, last: int, data: bytes) -> RawRow:
    text = data.rstrip(b"\r\n").replace(b"\r\n", b"\n")
    end_line = last if last > line else None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return RawRow(source, path, line, text.decode("utf-8", "replace"), None, "invalid_utf8", end_line)
    return RawRow(source, path, line, decoded, {"text": decoded}, None, end_line)


def _paragraphs(numbered: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
    """(first line, last line, text) of each blank-line separated block; blank lines are (n, n, b"")."""
    start, block = 0, []
    for lineno, line in numbered:
        if line.strip():
            start = start or lineno
            block.append(line)
            continue
        if block:
            yield start, lineno - 1, b"".join(block)
            start, block = 0, []
        yield lineno, lineno, b""
    if block:
        yield start, start + len(block) - 1, b"".join(block)


_READERS: dict[str, Callable[[str, str, ReadOptions], Iterator[RawRow]]] = {
    "jsonl": read_jsonl, "json": read_json, "csv": partial(read_delimited, delimiter=","),
    "tsv": partial(read_delimited, delimiter="\t"), "parquet": read_parquet, "txt": _read_txt}
