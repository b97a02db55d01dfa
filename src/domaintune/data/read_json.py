"""Read JSON Lines and JSON files into `RawRow`s, losing no record to a syntax error.

JSON Lines are split on b"\\n" only (a trailing "\\r" is dropped), so U+2028, U+2029 or \\x85 inside
a record never cut it. A line that fails to parse and holds bare "\\r" is an old-Mac file (or a mix):
it is split on "\\r" and each piece counts as a line. A .json file holding an array is walked element
by element; an element with a syntax error becomes one invalid_json row and reading goes on at
the next element (see `_bad_element_end`), so one trailing comma costs one record, not the rest of
the file. A .json file that is really JSON Lines is read line by line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from domaintune.data.formats import detect_record_format
from domaintune.data.rows import (BOM, RawRow, ReadOptions, encodable, json_row, line_count, lines, open_binary,
                                  replace_bad_bytes)

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# What the resync scan looks at: strings (an unterminated one ends at its line: JSON strings hold
# no raw newline), brackets, commas and line ends.
_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|[\[\]{},\n]')
# (offset, raw, obj, error, detail) of one value found in a .json file.
_Item = tuple[int, str, Any, str | None, str | None]


def read_jsonl(path: str, source: str, opts: ReadOptions) -> Iterator[RawRow]:
    lineno = blank = 0
    with open_binary(path) as f:
        for physical in lines(f):
            for line in _cr_lines(physical.removesuffix(b"\n").removesuffix(b"\r")):
                lineno += 1
                if not line or line.isspace():
                    blank += 1
                    continue
                yield _jsonl_row(source, path, lineno, line, opts.columns)
    opts.report(path, lineno, blank)


def _cr_lines(line: bytes) -> list[bytes]:
    """One line, or the pieces of an old-Mac line ("\\r" line ends) when it does not parse whole."""
    if b"\r" not in line or _parses(line):
        return [line]
    pieces = line.split(b"\r")
    return pieces[:-1] if pieces[-1] == b"" else pieces


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _jsonl_row(source: str, path: str, lineno: int, line: bytes, columns: dict[str, str]) -> RawRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return RawRow(source, path, lineno, line.decode("utf-8", "replace"), None, "invalid_utf8",
                      detail=f"byte {err.start + 1} is not UTF-8")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:
        return RawRow(source, path, lineno, text, None, "invalid_json", detail=_json_error(err))
    return json_row(source, path, lineno, text, obj, columns)


def _json_error(err: Exception, line_too: bool = False) -> str:
    if isinstance(err, json.JSONDecodeError):
        where = f"line {err.lineno} column {err.colno}" if line_too else f"column {err.colno}"
        return f"{err.msg} at {where}"
    return "nested too deeply" if isinstance(err, RecursionError) else str(err)


def read_json(path: str, source: str, opts: ReadOptions) -> Iterator[RawRow]:
    with open_binary(path) as f:
        data = f.read()
    text = data.removeprefix(BOM).decode("utf-8", "surrogateescape")
    start = _WS.match(text).end()
    units = line_count(text)
    if start == len(text):
        opts.report(path, units, units)
        return
    if text[start] == "[":
        values = _array_items(text, start, top=True)
    else:
        obj, end = _decode_one(text, start)
        if text[start] == "{" and (end is None or end != len(text)):
            # Many ".json" files are really JSON Lines; reading them line by line loses nothing.
            yield from read_jsonl(path, source, opts)
            return
        values = _top_value(text, start, obj, end)
    line, pos, covered = 1, 0, _Coverage()
    for offset, raw, obj, error, detail in values:
        line, pos = line + text.count("\n", pos, offset), offset
        row = _json_value_row(source, path, line, raw, obj, error, detail, opts.columns)
        covered.add(row.line, row.last_line)
        yield row
    opts.report(path, units, units - covered.lines)


def _json_value_row(source: str, path: str, line: int, raw: str, obj: Any, error: str | None,
                    detail: str | None, columns: dict[str, str]) -> RawRow:
    end_line = line + n if (n := raw.count("\n")) else None
    if error is None and not encodable(raw):
        error, detail = "invalid_utf8", "bytes that are not UTF-8"
    if error is None:
        return json_row(source, path, line, raw, obj, columns, end_line)
    return RawRow(source, path, line, replace_bad_bytes(raw), None, error, end_line, detail)


class _Coverage:
    """Counts the distinct lines covered by row spans that arrive in order (they may share lines)."""

    def __init__(self) -> None:
        self.lines, self.last = 0, 0

    def add(self, first: int, last: int) -> None:
        self.lines += max(0, last - max(first, self.last + 1) + 1)
        self.last = max(self.last, last)


def _decode_one(text: str, start: int) -> tuple[Any, int | None]:
    """The JSON value at `start` and where the text after it ends (None: not valid JSON)."""
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None, None
    return obj, _WS.match(text, end).end()


def _top_value(text: str, start: int, obj: Any, end: int | None) -> Iterator[_Item]:
    """The rows of a whole-file JSON value that is not an array."""
    if end is None or end != len(text):
        yield start, text[start:].rstrip(), None, "invalid_json", _whole_error(text, start)
        return
    offsets = _list_offsets(text, start) if isinstance(obj, dict) and detect_record_format(obj) is None else []
    if not offsets:
        yield start, text[start:end].rstrip(), obj, None, None
    for offset in offsets:
        yield from _array_items(text, offset)


def _whole_error(text: str, start: int) -> str:
    try:
        _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError) as err:
        return _json_error(err, line_too=True)
    return "text after the JSON value"


def _array_items(text: str, start: int, top: bool = False) -> Iterator[_Item]:
    """Walk a JSON array element by element. An element with a syntax error becomes one invalid_json
    item and the walk goes on at the next element; for the file's `top` array, text after its "]"
    is one more invalid_json item. A missing comma between two good elements costs nothing."""
    idx = _WS.match(text, start + 1).end()
    while idx < len(text) and text[idx] != "]":
        try:
            obj, end = _DECODER.raw_decode(text, idx)
        except (ValueError, RecursionError) as err:
            end = _bad_element_end(text, idx)
            raw = text[idx:end].rstrip()
            raw = raw[:-1].rstrip() if raw.endswith(",") else raw
            if raw:   # "[1,,2]" has an empty element: nothing to keep, nothing lost
                yield idx, raw, None, "invalid_json", _json_error(err, line_too=True)
        else:
            yield idx, text[idx:end], obj, None, None
        idx = _WS.match(text, end).end()
        if text.startswith(",", idx):
            idx = _WS.match(text, idx + 1).end()
    rest = _WS.match(text, idx + 1).end() if idx < len(text) else len(text)
    if top and rest < len(text):
        yield rest, text[rest:].rstrip(), None, "invalid_json", "text after the closing ] of the array"


def _bad_element_end(text: str, idx: int) -> int:
    """Where the broken array element at `idx` ends: at the first comma outside its brackets and
    strings, at the "]" that closes the array, or (for an element that opens its own line, as in
    pretty-printed or one-per-line arrays) at the next line that opens a sibling at the same
    indentation, so a missing bracket cannot swallow the elements after it."""
    line_start = text.rfind("\n", 0, idx) + 1
    indent = text[line_start:idx]
    sibling = indent + text[idx] if text[idx] in "{[" and not indent.strip() else None
    depth = 0
    for m in _TOKENS.finditer(text, idx):
        tok = m.group()
        if tok == "\n":
            if sibling is not None and text.startswith(sibling, m.end()):
                return m.start()
        elif tok[0] == '"':
            continue
        elif tok in "[{":
            depth += 1
        elif tok in "]}":
            depth -= 1
            if depth < 0:
                if tok == "]":
                    return m.start()
                depth = 0   # a stray "}": part of the broken element
        elif depth == 0:
            return m.start()
    return len(text)


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
