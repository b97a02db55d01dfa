"""Tests for domaintune.data.read_json: a JSON array resynchronises after a bad element, JSONL lines
end at "\\n" only (old-Mac "\\r" files still read as lines), and every physical line is tallied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.readers import FileTally, RawRow, read_rows


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _summary(rows: list[RawRow]) -> list[tuple[int, str | None, dict | None]]:
    return [(r.line, r.error, r.obj) for r in rows]


def _read(path: str) -> tuple[list[RawRow], list[FileTally]]:
    tallies: list[FileTally] = []
    return list(read_rows(path, "s", tally=tallies.append)), tallies


def test_json_array_continues_after_a_trailing_comma_inside_an_element(tmp_path: Path) -> None:
    records = [json.dumps({"text": f"record {i}"}) for i in range(100)]
    records[5] = '{"text": "record 5",}'                    # a trailing comma inside element 6
    path = _write(tmp_path, "a.json", ("[\n" + ",\n".join(records) + "\n]\n").encode())
    rows, tallies = _read(path)
    assert len(rows) == 100
    assert [r.line for r in rows] == list(range(2, 102))
    bad = [r for r in rows if r.error]
    assert [(r.line, r.error, r.raw) for r in bad] == [(7, "invalid_json", '{"text": "record 5",}')]
    assert "line 7" in bad[0].detail
    assert [r.obj["text"] for r in rows if r.obj] == [f"record {i}" for i in range(100) if i != 5]
    assert tallies == [FileTally(path, units=102, skipped=2)]   # every line but "[" and "]" is in a row


def test_json_pretty_array_resyncs_at_the_next_element_when_a_brace_is_missing(tmp_path: Path) -> None:
    text = ('[\n  {\n    "text": "a"\n  },\n  {\n    "text": "b",\n    "n": [1, 2\n  },\n'
            '  {\n    "text": "c"\n  }\n]\n')
    rows, tallies = _read(_write(tmp_path, "p.json", text.encode()))
    assert _summary(rows) == [(2, None, {"text": "a"}), (5, "invalid_json", None), (9, None, {"text": "c"})]
    assert rows[1].raw == '{\n    "text": "b",\n    "n": [1, 2\n  }' and rows[1].last_line == 8
    assert tallies[0].units == 12 and tallies[0].skipped == 2


def test_json_compact_array_resyncs_after_bad_elements(tmp_path: Path) -> None:
    text = b'[{"text": "a"}, {"text": "b",}, {"text" "c"}, {"text": "d"} {"text": "e"}, oops, {"text": "f"}]'
    rows, _ = _read(_write(tmp_path, "c.json", text))
    assert [(r.error, r.raw) for r in rows] == [
        (None, '{"text": "a"}'), ("invalid_json", '{"text": "b",}'), ("invalid_json", '{"text" "c"}'),
        (None, '{"text": "d"}'), (None, '{"text": "e"}'), ("invalid_json", "oops"), (None, '{"text": "f"}')]


def test_json_unterminated_string_ends_at_its_line(tmp_path: Path) -> None:
    text = b'[\n{"text": "a},\n{"text": "b"},\n{"text": "c"}\n]'
    rows, tallies = _read(_write(tmp_path, "s.json", text))
    assert _summary(rows) == [(2, "invalid_json", None), (3, None, {"text": "b"}), (4, None, {"text": "c"})]
    assert tallies[0].units == 5 and tallies[0].skipped == 2


def test_jsonl_old_mac_line_ends_are_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.jsonl", b'{"text": "a"}\r{"text": "b"}\r\r{oops\r{"text": "d"}')
    rows, tallies = _read(path)
    assert _summary(rows) == [(1, None, {"text": "a"}), (2, None, {"text": "b"}), (4, "invalid_json", None),
                              (5, None, {"text": "d"})]
    assert tallies == [FileTally(path, units=5, skipped=1)]


def test_jsonl_splits_on_newline_only(tmp_path: Path) -> None:
    # U+2028/U+2029, \x85 and \x1c-\x1e are line breaks to str.splitlines, not to JSON Lines.
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x1ch\x1di\x1ej"]
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\r\n" for t in texts).encode()
    rows, tallies = _read(_write(tmp_path, "u.jsonl", data))
    assert [r.obj["text"] for r in rows] == texts
    assert tallies[0].units == 4 and tallies[0].skipped == 0


def test_jsonl_tally_counts_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.jsonl", b'\n{"text": "a"}\n   \n{oops\n\n')
    rows, tallies = _read(path)
    assert [r.line for r in rows] == [2, 4]
    assert tallies == [FileTally(path, units=5, skipped=3)]


_FRAGMENTS = st.sampled_from(['{"text": "a"}', '{"text": "b",}', '{"t" "c"}', "[1, 2", "]", "}", "{", '"s', ",",
                              "\n", "  ", "\r\n", "\r", "oops", "\\", "\u2028", '{"m": [{"x": "\\ud800"}]}'])


@settings(max_examples=80, deadline=None)
@given(parts=st.lists(_FRAGMENTS, max_size=30), name=st.sampled_from(["r.json", "r.jsonl", "a.json"]))
def test_any_json_text_reads_and_every_line_is_accounted_for(tmp_path_factory: pytest.TempPathFactory,
                                                             read_and_reconcile, parts: list[str], name: str) -> None:
    text = ("[" if name == "a.json" else "") + "".join(parts)
    path = _write(tmp_path_factory.mktemp("j"), name, text.encode())
    ledger = read_and_reconcile(path)
    assert ledger.files[("s", path)].tally is not None
