"""Read raw user data files (jsonl, json, csv, tsv, parquet, txt) into rows that remember where they came from.

`read_rows` yields one `RawRow` per input row, with its source name, file, 1-based line and raw text,
and never drops a row silently: a row that cannot be decoded or parsed still comes out, with
``obj=None`` and an error code from `schema.REJECT_REASONS`, so `prepare` can write it to the
rejects file. Blank lines are not rows. Reading streams (bounded memory) for jsonl, csv, tsv,
parquet and txt by line or paragraph; a .json file or a whole .txt file is read at once.
Files ending in .gz are decompressed on the fly.

Example:
    >>> for row in read_rows("data/train.jsonl", source="train"):   # doctest: +SKIP
    ...     print(row.line, row.obj or row.error)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

from domaintune.data.formats import detect_record_format
from domaintune.errors import UserError


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input row, parsed or not, with its origin.

    Attributes:
        source: the source name (the user's tag, by default the file stem).
        file: the path as given.
        line: 1-based line where the row starts (parquet: row index + 1).
        raw: the row's raw text (decoded with errors="replace"), for the rejects file.
        obj: the parsed object; None when it could not be parsed.
        error: why `obj` is None: "invalid_utf8", "invalid_json", "not_an_object", "wrong_column_count"
            or "invalid_csv".
    """

    source: str
    file: str
    line: int
    raw: str
    obj: dict | None
    error: str | None = None


FILE_TYPES = ("jsonl", "json", "csv", "tsv", "parquet", "txt")
TEXT_UNITS = ("file", "paragraph", "line")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".md": "txt", ".text": "txt"}
# CSV cells that hold a conversation are often written as a JSON string; these get parsed.
_JSON_COLUMNS = frozenset({"messages", "conversations", "conversation", "history"})
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DECODER = json.JSONDecoder()
_CSV_FIELD_LIMIT = 2**31 - 1   # the default (128 KiB) rejects long documents kept in one cell


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
              text_unit: str = "file") -> Iterator[RawRow]:
    """Stream the rows of a data file (or of every data file in a directory).

    Arguments are checked when called, not when iteration starts, so a missing file fails early.

    Args:
        path: a data file, or a directory (its files with known extensions are read in sorted order;
            with an explicit `file_type`, only files of that type).
        source: the source name stamped on every row.
        file_type: "auto" (from the extension) or one of `FILE_TYPES`.
        columns: renames the file's columns/keys to canonical names, e.g. {"question": "instruction"}.
        text_unit: for txt files, what one row is: "file", "paragraph" (blank-line separated) or "line".

    Returns:
        An iterator of `RawRow`, in file order.

    Raises:
        UserError: the path does not exist, the type or text unit is unknown, or a mapped column is missing.

    Example:
        >>> rows = read_rows("qa.csv", "qa", columns={"q": "instruction", "a": "output"})  # doctest: +SKIP
    """
    if file_type != "auto" and file_type not in FILE_TYPES:
        raise UserError(f"unknown file type '{file_type}'", file=path, hint=f"use auto or one of {', '.join(FILE_TYPES)}")
    if text_unit not in TEXT_UNITS:
        raise UserError(f"unknown text unit '{text_unit}'", file=path, hint=f"use one of {', '.join(TEXT_UNITS)}")
    files = [(f, file_type if file_type != "auto" else detect_file_type(f)) for f in _expand(path, file_type)]
    opts = _Options(dict(columns or {}), text_unit)
    return chain.from_iterable(_READERS[ft](f, source, opts) for f, ft in files)


@dataclass(frozen=True)
class _Options:
    columns: dict[str, str]
    text_unit: str


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


def _open_binary(path: str) -> IO[bytes]:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    first = f.readline()
    return chain((first[3:] if first.startswith(_BOM) else first,), f)


def _row(source: str, path: str, line: int, text: str, obj: Any, columns: dict[str, str]) -> RawRow:
    """A row for a parsed JSON value: not_an_object unless a dict; keys renamed by `columns`."""
    if type(obj) is not dict:
        return RawRow(source, path, line, text, None, "not_an_object")
    # A lone surrogate escape ("\ud83d" of a cut emoji) parses but cannot be written back as UTF-8.
    if ("\\ud" in text or "\\uD" in text) and not _encodable(json.dumps(obj, ensure_ascii=False)):
        return RawRow(source, path, line, text, None, "invalid_utf8")
    if columns:
        obj = {columns.get(k, k): v for k, v in obj.items()}
    return RawRow(source, path, line, text, obj)


def _read_jsonl(path: str, source: str, opts: _Options) -> Iterator[RawRow]:
    loads, columns = json.loads, opts.columns
    with _open_binary(path) as f:
        for lineno, line in enumerate(_lines(f), 1):
            line = line.rstrip(b"\r\n")
            if not line or line.isspace():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield RawRow(source, path, lineno, line.decode("utf-8", "replace"), None, "invalid_utf8")
                continue
            try:
                obj = loads(text)
            except (ValueError, RecursionError):
                yield RawRow(source, path, lineno, text, None, "invalid_json")
                continue
            yield _row(source, path, lineno, text, obj, columns)


def _read_json(path: str, source: str, opts: _Options) -> Iterator[RawRow]:
    with _open_binary(path) as f:
        data = f.read()
    data = data[3:] if data.startswith(_BOM) else data
    text = data.decode("utf-8", "surrogateescape")
    start = _WS.match(text).end()
    if start == len(text):
        return
    if text[start] == "[":
        values = _array_items(text, start, _line_of(text, start), top=True)
    else:
        obj, end = _decode_one(text, start)
        if text[start] == "{" and (end is None or end != len(text)):
            # Many ".json" files are really JSON Lines; reading them line by line loses nothing.
            yield from _read_jsonl(path, source, opts)
            return
        values = _top_value(text, start, obj, end)
    for line, raw, obj, error in values:
        if error is None and not _encodable(raw):
            error = "invalid_utf8"
        if error is None:
            yield _row(source, path, line, raw, obj, opts.columns)
        else:
            yield RawRow(source, path, line, _replace_bad_bytes(raw), None, error)


def _decode_one(text: str, start: int) -> tuple[Any, int | None]:
    """The JSON value at `start` and where the text after it ends (None: not valid JSON)."""
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None, None
    return obj, _WS.match(text, end).end()


def _top_value(text: str, start: int, obj: Any, end: int | None) -> Iterator[tuple[int, str, Any, str | None]]:
    """(line, raw, obj, error) rows of a whole-file JSON value that is not an array."""
    line = _line_of(text, start)
    if end is None or end != len(text):
        yield line, text[start:], None, "invalid_json"
        return
    offsets = _list_offsets(text, start) if isinstance(obj, dict) and detect_record_format(obj) is None else []
    if not offsets:
        yield line, text[start:end].rstrip(), obj, None
    for offset in offsets:
        yield from _array_items(text, offset, _line_of(text, offset))


def _array_items(text: str, start: int, line: int, top: bool = False) -> Iterator[tuple[int, str, Any, str | None]]:
    """Walk a JSON array element by element so each one knows its line. A syntax error (or, for the
    file's `top` array, text after it) ends it with one invalid_json row holding the rest of the text,
    so the good elements before it are kept."""
    idx, seen = _WS.match(text, start + 1).end(), start
    while not text.startswith("]", idx):
        line += text.count("\n", seen, idx)
        seen = idx
        try:
            obj, end = _DECODER.raw_decode(text, idx)
        except (ValueError, RecursionError):
            yield line, text[idx:], None, "invalid_json"
            return
        yield line, text[idx:end], obj, None
        idx = _WS.match(text, end).end()
        if text.startswith(",", idx):
            idx = _WS.match(text, idx + 1).end()
        elif not text.startswith("]", idx):
            yield line + text.count("\n", seen, idx), text[idx:], None, "invalid_json"
            return
    rest = _WS.match(text, idx + 1).end()
    if top and rest < len(text):
        yield _line_of(text, rest), text[rest:], None, "invalid_json"


def _list_offsets(text: str, start: int) -> list[int]:
    """Offsets of the list values of the (valid) JSON object at `start`: the rows of a wrapper
    such as {"version": 2, "data": [...]}."""
    offsets, idx = [], _WS.match(text, start + 1).end()
    while text.startswith('"', idx):
        _, idx = _DECODER.raw_decode(text, idx)          # the key
        idx = _WS.match(text, _WS.match(text, idx).end() + 1).end()   # past ':'
        if text.startswith("[", idx):
            offsets.append(idx)
        _, idx = _DECODER.raw_decode(text, idx)          # the value
        idx = _WS.match(text, idx).end()
        idx = _WS.match(text, idx + 1).end() if text.startswith(",", idx) else idx
    return offsets


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _encodable(text: str) -> bool:
    """False when `text` holds surrogates: escaped undecodable bytes or lone JSON surrogate escapes."""
    return _SURROGATE.search(text) is None


def _replace_bad_bytes(raw: str) -> str:
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _tap(f: Iterable[str], taken: list[str]) -> Iterator[str]:
    """Hands lines to `csv.reader` and keeps them, so each row's raw text and start line are known."""
    for line in f:
        taken.append(line)
        yield line


def _read_delimited(path: str, source: str, opts: _Options, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # surrogateescape keeps undecodable bytes so a bad row can be flagged instead of failing the file.
    with io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = _csv_rows(f, delimiter)
        header = next(rows, None)
        if header is None:
            return
        names = _header_names(header[2], opts.columns, path, header[0])
        for line, raw, cells in rows:
            yield _csv_row(source, path, line, raw, cells, names)


def _csv_rows(f: Iterable[str], delimiter: str) -> Iterator[tuple[int, str, list[str] | None]]:
    """(start line, raw text, cells) per non-blank row; cells is None for a row csv cannot parse."""
    taken: list[str] = []
    reader, consumed = csv.reader(_tap(f, taken), delimiter=delimiter), 0
    while True:
        try:
            cells: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error:
            cells = None
        start, consumed = consumed + 1, consumed + len(taken)
        raw = "".join(taken).rstrip("\r\n")
        taken.clear()
        if cells is None or any(c.strip() for c in cells):   # rows of empty cells are blank lines
            yield start, raw, cells


def _header_names(header: list[str] | None, columns: dict[str, str], path: str, line: int) -> list[str]:
    if header is None:
        raise UserError("the header row cannot be parsed", file=path, line=line)
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


def _csv_row(source: str, path: str, line: int, raw: str, cells: list[str] | None, names: list[str]) -> RawRow:
    if not _encodable(raw):
        return RawRow(source, path, line, _replace_bad_bytes(raw), None, "invalid_utf8")
    if cells is None:
        return RawRow(source, path, line, raw, None, "invalid_csv")
    if len(cells) > len(names):
        return RawRow(source, path, line, raw, None, "wrong_column_count")
    obj = dict(zip(names, cells))
    for name in names[len(cells):]:
        obj[name] = ""   # a short row: trailing empty cells were left out
    return RawRow(source, path, line, raw, _parse_json_cells(obj))


def _parse_json_cells(obj: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_COLUMNS.intersection(obj):
        value = obj[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            # An empty conversation cell means "not this shape": a table mixing Alpaca rows and
            # chat rows must not have its Alpaca rows taken for empty chats.
            del obj[key]
        elif isinstance(value, str) and value.lstrip().startswith("["):
            try:
                obj[key] = json.loads(value)
            except (ValueError, RecursionError):
                pass   # left a string: formats rejects it as bad_field, with the reason
    return obj


def _read_parquet(path: str, source: str, opts: _Options) -> Iterator[RawRow]:
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


def _parquet_row(source: str, path: str, line: int, obj: dict[str, Any]) -> RawRow:
    try:
        raw = json.dumps(obj, ensure_ascii=False)
    except TypeError:   # dates, bytes, decimals: store their JSON form so metadata stays serializable
        raw = json.dumps(obj, ensure_ascii=False, default=_jsonable)
        obj = json.loads(raw)
    return RawRow(source, path, line, raw, _parse_json_cells(obj))


def _jsonable(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _read_txt(path: str, source: str, opts: _Options) -> Iterator[RawRow]:
    with _open_binary(path) as f:
        if opts.text_unit == "file":
            units: Iterable[tuple[int, bytes]] = [(1, b"".join(_lines(f)))]
        else:
            units = _paragraphs(_lines(f)) if opts.text_unit == "paragraph" else enumerate(_lines(f), 1)
        for line, data in units:
            if not data.strip():
                continue
            text = data.rstrip(b"\r\n").replace(b"\r\n", b"\n")
            try:
                decoded = text.decode("utf-8")
            except UnicodeDecodeError:
                yield RawRow(source, path, line, text.decode("utf-8", "replace"), None, "invalid_utf8")
                continue
            yield RawRow(source, path, line, decoded, {"text": decoded})


def _paragraphs(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    start, block = 0, []
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            start = start or lineno
            block.append(line)
        elif block:
            yield start, b"".join(block)
            start, block = 0, []
    if block:
        yield start, b"".join(block)


_READERS: dict[str, Callable[[str, str, _Options], Iterator[RawRow]]] = {
    "jsonl": _read_jsonl, "json": _read_json, "csv": partial(_read_delimited, delimiter=","),
    "tsv": partial(_read_delimited, delimiter="\t"), "parquet": _read_parquet, "txt": _read_txt}
