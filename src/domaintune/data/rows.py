"""What every reader shares: the `RawRow` it yields, the `FileTally` it reports, and byte helpers.

Each reader (`read_json.py`, `read_table.py`, the text reader in `readers.py`) yields one `RawRow`
per physical record and, when a file is read to its end, one `FileTally`: how many physical lines
(Parquet: rows) the file has and how many hold no record (blank lines, a CSV header, the brackets
of a JSON array). `rejects.Ledger` checks that the rows' line spans plus those skipped lines cover
the whole file, so a reader that swallows lines cannot go unnoticed.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from itertools import chain
from typing import IO, Any, Callable, Iterator

BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row, parsed or not, with its origin.

    Attributes:
        source: the source name (the user's tag, by default the file stem).
        file: the path as given.
        line: 1-based line where the row starts (parquet: row index + 1).
        raw: the row's raw text (decoded with errors="replace"), for the rejects file.
        obj: the parsed object; None when it could not be parsed.
        error: why `obj` is None: "invalid_utf8", "invalid_json", "not_an_object", "wrong_column_count",
            "invalid_csv" or "empty_row".
        end_line: the last physical line of the row when it spans several (None: just `line`).
        detail: what exactly is wrong, when the reader knows more than `error` says (the JSON
            error and its position, the lines an unclosed CSV quote swallowed).
    """

    source: str
    file: str
    line: int
    raw: str
    obj: dict | None
    error: str | None = None
    end_line: int | None = None
    detail: str | None = None

    @property
    def last_line(self) -> int:
        return self.end_line or self.line


@dataclass(frozen=True, slots=True)
class FileTally:
    """The physical size of one file read to its end.

    Attributes:
        file: the path as given.
        units: physical lines ("\\n"-terminated, plus an unterminated last one; old-Mac "\\r" lines
            in JSONL count one each); for Parquet, rows.
        skipped: how many of those hold no record: blank lines, a CSV header, JSON punctuation.
    """

    file: str
    units: int
    skipped: int


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader gets: column renames, the txt unit, and where tallies go."""

    columns: dict[str, str]
    text_unit: str = "file"
    tally: Callable[[FileTally], None] | None = field(default=None, compare=False)

    def report(self, path: str, units: int, skipped: int) -> None:
        if self.tally is not None:
            self.tally(FileTally(path, units, skipped))


def open_binary(path: str) -> IO[bytes]:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def lines(f: IO[bytes]) -> Iterator[bytes]:
    """The file's lines, split on b"\\n" only, with a leading BOM removed."""
    first = f.readline()
    return chain((first[3:] if first.startswith(BOM) else first,) if first else (), f)


def line_count(text: str) -> int:
    """Physical lines of a whole text: each "\\n" ends one, and a non-empty tail is one more."""
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def json_row(source: str, path: str, line: int, text: str, obj: Any, columns: dict[str, str],
             end_line: int | None = None) -> RawRow:
    """A row for a parsed JSON value: not_an_object unless a dict; keys renamed by `columns`."""
    if type(obj) is not dict:
        return RawRow(source, path, line, text, None, "not_an_object", end_line)
    # A lone surrogate escape ("\ud83d" of a cut emoji) parses but cannot be written back as UTF-8.
    if ("\\ud" in text or "\\uD" in text) and not encodable(json.dumps(obj, ensure_ascii=False)):
        return RawRow(source, path, line, text, None, "invalid_utf8", end_line,
                      "a lone surrogate escape (\\ud800-\\udfff)")
    if columns:
        obj = {columns.get(k, k): v for k, v in obj.items()}
    return RawRow(source, path, line, text, obj, None, end_line)


def encodable(text: str) -> bool:
    """False when `text` holds surrogates: escaped undecodable bytes or lone JSON surrogate escapes."""
    return _SURROGATE.search(text) is None


def replace_bad_bytes(raw: str) -> str:
    """`raw` with undecodable bytes (and lone surrogates) as U+FFFD, so it can be written as UTF-8."""
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:   # a surrogate that is no escaped byte (from a JSON "\ud800" escape)
        return _SURROGATE.sub("\ufffd", raw)
