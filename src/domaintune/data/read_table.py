"""Read CSV/TSV and Parquet files into `RawRow`s, one per row, with the lines each row spans.

CSV cells holding a conversation as a JSON string ("messages", "conversations", ...) are parsed.
A quote that opens and never closes properly would make the csv module read every following line
into one cell; a row that spans several lines and does not parse in strict mode is such a
runaway: its first line becomes an invalid_csv row naming the lines it swallowed, and those lines
are read again as rows. A row whose cells are all empty or blank is an empty_row reject; a line
with nothing on it is a blank line, not a row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Iterable, Iterator

from domaintune.data.rows import RawRow, ReadOptions, encodable, open_binary, replace_bad_bytes
from domaintune.errors import UserError

# CSV cells that hold a conversation are often written as a JSON string; these get parsed.
_JSON_COLUMNS = frozenset({"messages", "conversations", "conversation", "history"})
_CSV_FIELD_LIMIT = 2**31 - 1   # the default (128 KiB) rejects long documents kept in one cell
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Lines:
    """The file's lines for `csv.reader`, keeping what each row took; lines can be pushed back."""

    def __init__(self, f: Iterable[str]) -> None:
        self._f, self._back = iter(f), []
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._back.pop() if self._back else next(self._f)
        self.taken.append(line)
        return line

    def push_back(self, lines: list[str]) -> None:
        self._back.extend(reversed(lines))


def read_delimited(path: str, source: str, opts: ReadOptions, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    units = skipped = 0
    names: list[str] | None = None
    # surrogateescape keeps undecodable bytes so a bad row can be flagged instead of failing the file.
    with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for start, taken, cells, detail in _csv_rows(f, delimiter):
            units += len(taken)
            if cells == []:   # a line with nothing on it
                skipped += 1
            elif names is None:
                names = _header_names(cells, opts.columns, path, start, detail)
                skipped += len(taken)
            else:
                yield _csv_row(source, path, start, taken, cells, detail, names)
    opts.report(path, units, skipped)


def _csv_rows(f: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str], list[str] | None, str | None]]:
    """(start line, lines taken, cells, detail) per row; cells is None for a row csv cannot parse
    and [] for a blank line."""
    src = _Lines(f)
    reader, consumed = csv.reader(src, delimiter=delimiter), 0
    while True:
        detail = None
        try:
            cells: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            cells, detail = None, f"csv: {err}"
        taken, src.taken = src.taken, []
        start = consumed + 1
        if len(taken) > 1 and (cells is None or not _parses_strictly(taken, delimiter)):
            end = start + len(taken) - 1
            src.push_back(taken[1:])
            reader = csv.reader(src, delimiter=delimiter)
            taken = taken[:1]
            cells, detail = None, (f"a quote on line {start} is not closed properly and swallowed lines {start}-{end}; "
                                   f"line {start} is rejected and lines {start + 1}-{end} are read again")
        consumed += len(taken)
        yield start, taken, cells, detail


def _parses_strictly(taken: list[str], delimiter: str) -> bool:
    try:
        return len(list(csv.reader(taken, delimiter=delimiter, strict=True))) == 1
    except csv.Error:
        return False


def _header_names(header: list[str] | None, columns: dict[str, str], path: str, line: int,
                  detail: str | None = None) -> list[str]:
    if header is None:
        raise UserError(f"the header row cannot be parsed ({detail})", file=path, line=line,
                        hint="fix the quoting of the first row")
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    missing = [c for c in columns if c not in names]
    if missing:
        raise UserError(f"mapped column(s) {missing} not in the header", file=path, line=line,
                        hint=f"the columns are: {', '.join(names)}")
    names = [columns.get(n, n) for n in names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"duplicate column name(s) {dupes} in the header (after mapping)", file=path, line=line,
                        hint="give every column a distinct name")
    return names


def _csv_row(source: str, path: str, line: int, taken: list[str], cells: list[str] | None, detail: str | None,
             names: list[str]) -> RawRow:
    raw = "".join(taken).rstrip("\r\n")
    end_line = line + len(taken) - 1 if len(taken) > 1 else None
    if not encodable(raw):
        return RawRow(source, path, line, replace_bad_bytes(raw), None, "invalid_utf8", end_line)
    if cells is None:
        return RawRow(source, path, line, raw, None, "invalid_csv", end_line, detail)
    if not any(c.strip() for c in cells):
        return RawRow(source, path, line, raw, None, "empty_row", end_line, "every cell is empty or blank")
    if len(cells) > len(names):
        return RawRow(source, path, line, raw, None, "wrong_column_count", end_line,
                      f"{len(cells)} cells, the header has {len(names)}")
    obj = dict(zip(names, cells))
    for name in names[len(cells):]:
        obj[name] = ""   # a short row: trailing empty cells were left out
    return _table_row(source, path, line, raw, obj, end_line)


def _table_row(source: str, path: str, line: int, raw: str, obj: dict[str, Any], end_line: int | None) -> RawRow:
    obj, problem = _parse_json_cells(obj)
    if problem is not None:
        return RawRow(source, path, line, raw, None, "invalid_utf8", end_line, problem)
    return RawRow(source, path, line, raw, obj, None, end_line)


def _parse_json_cells(obj: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The row with its JSON conversation cells parsed, and a problem (a lone surrogate) or None."""
    for key in _JSON_COLUMNS.intersection(obj):
        value = obj[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            # An empty conversation cell means "not this shape": a table mixing Alpaca rows and
            # chat rows must not have its Alpaca rows taken for empty chats.
            del obj[key]
        elif isinstance(value, str) and value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                continue   # left a string: formats rejects it as bad_field, with the reason
            # A lone surrogate escape ("\ud83d" of a cut emoji) parses but cannot be written as UTF-8.
            if _SURROGATE_ESCAPE.search(value) and not encodable(json.dumps(parsed, ensure_ascii=False)):
                return obj, f"column '{key}' holds a lone surrogate escape (\\ud800-\\udfff)"
            obj[key] = parsed
    return obj, None


def read_parquet(path: str, source: str, opts: ReadOptions) -> Iterator[RawRow]:
    import pyarrow.parquet as pq   # heavy; only parquet inputs pay for it

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:   # pyarrow raises several types (ArrowInvalid, OSError) for unreadable files
        raise UserError(f"cannot read the parquet file ({err})", file=path) from None
    names = _header_names(pf.schema_arrow.names, opts.columns, path, 1)
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        columns = [col.to_pylist() for col in batch.columns]
        for values in zip(*columns):
            index += 1
            yield _parquet_row(source, path, index, dict(zip(names, values)))
    opts.report(path, pf.metadata.num_rows, 0)


def _parquet_row(source: str, path: str, line: int, obj: dict[str, Any]) -> RawRow:
    try:
        raw = json.dumps(obj, ensure_ascii=False)
    except TypeError:   # dates, bytes, decimals: store their JSON form so metadata stays serializable
        raw = json.dumps(obj, ensure_ascii=False, default=_jsonable)
        obj = json.loads(raw)
    if not encodable(raw):
        return RawRow(source, path, line, replace_bad_bytes(raw), None, "invalid_utf8",
                      detail="a value holds a lone surrogate")
    return _table_row(source, path, line, raw, obj, None)


def _jsonable(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
