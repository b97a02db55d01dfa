"""Tests for domaintune.data.read_table: runaway CSV quotes, blank-cell rows, lone surrogates in JSON
cells (CSV and Parquet), and the physical-line tally of CSV files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.readers import FileTally, RawRow, read_rows

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _read(path: str, **kwargs) -> tuple[list[RawRow], list[FileTally]]:
    tallies: list[FileTally] = []
    return list(read_rows(path, "s", tally=tallies.append, **kwargs)), tallies


def test_csv_unclosed_quote_is_a_reject_naming_its_span_and_the_lines_after_it_are_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.csv", b'q,a\n1,"oops\n2,b\n3,c\n4,d\n')
    rows, tallies = _read(path)
    assert [(r.line, r.error, r.obj) for r in rows] == [
        (2, "invalid_csv", None), (3, None, {"q": "2", "a": "b"}), (4, None, {"q": "3", "a": "c"}),
        (5, None, {"q": "4", "a": "d"})]
    assert rows[0].raw == '1,"oops' and rows[0].last_line == 2
    assert "lines 2-5" in rows[0].detail and "quote" in rows[0].detail
    assert tallies == [FileTally(path, units=5, skipped=1)]


def test_csv_stray_quote_closed_later_is_a_reject_and_the_swallowed_lines_come_back(tmp_path: Path) -> None:
    rows, _ = _read(_write(tmp_path, "s.csv", b'q,a\n1,"oops\n2,b\n3,c"d\n4,e\n'))
    assert [(r.line, r.error) for r in rows] == [(2, "invalid_csv"), (3, None), (4, None), (5, None)]
    assert "lines 2-4" in rows[0].detail
    assert rows[2].obj == {"q": "3", "a": 'c"d'}


def test_csv_legal_multiline_cells_stay_one_row() -> None:
    rows, tallies = _read(str(ASSETS / "sample.csv"), columns={"question": "instruction", "answer": "output"})
    assert [(r.line, r.last_line, r.error) for r in rows][:2] == [(2, 2, None), (3, 4, None)]
    assert tallies[0].units == 9 and tallies[0].skipped == 2    # the header and one blank line


def test_csv_blank_cell_rows_are_rejects_and_empty_lines_are_not_rows(tmp_path: Path) -> None:
    rows, tallies = _read(_write(tmp_path, "e.csv", b"text,n\n,\n , \n\n   \nx,1\n"))
    assert [(r.line, r.error, r.obj) for r in rows] == [
        (2, "empty_row", None), (3, "empty_row", None), (5, "empty_row", None), (6, None, {"text": "x", "n": "1"})]
    assert rows[1].raw == " , "
    assert tallies[0].units == 6 and tallies[0].skipped == 2


def test_csv_lone_surrogate_in_a_json_cell_is_invalid_utf8(tmp_path: Path) -> None:
    cell = json.dumps([{"role": "user", "content": "\ud83d cut"}, {"role": "assistant", "content": "ok"}])
    good = json.dumps([{"role": "user", "content": "\U0001F600"}, {"role": "assistant", "content": "ok"}])
    data = "messages\n" + "".join('"' + c.replace('"', '""') + '"\n' for c in (cell, good))
    rows, _ = _read(_write(tmp_path, "m.csv", data.encode()))
    assert [(r.line, r.error) for r in rows] == [(2, "invalid_utf8"), (3, None)]
    assert rows[0].obj is None and rows[1].obj["messages"][0]["content"] == "\U0001F600"


def test_parquet_lone_surrogate_in_a_json_cell_is_invalid_utf8(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = ['[{"role": "user", "content": "\\udc00"}, {"role": "assistant", "content": "a"}]',
             '[{"role": "user", "content": "fine"}, {"role": "assistant", "content": "a"}]']
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"messages": cells}), path)
    rows, tallies = _read(path)
    assert [(r.line, r.error) for r in rows] == [(1, "invalid_utf8"), (2, None)]
    assert tallies == [FileTally(path, units=2, skipped=0)]


@pytest.mark.parametrize("name, sep", [("t.tsv", "\t"), ("c.csv", ",")])
def test_table_tally_covers_every_line(tmp_path: Path, name: str, sep: str) -> None:
    data = f'a{sep}b\n1{sep}"two\nlines"\n\n3{sep}4\n5{sep}6{sep}7\n'.encode()
    rows, tallies = _read(_write(tmp_path, name, data))
    assert [(r.line, r.last_line, r.error) for r in rows] == [(2, 3, None), (5, 5, None), (6, 6, "wrong_column_count")]
    assert tallies[0].units == 6 and tallies[0].skipped == 2


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["a", ",", '"', "\n", "\r\n", " ", '""', "\r", "x,y,z", '"\n"', "\t"]), max_size=40))
def test_any_csv_text_reads_and_every_line_is_accounted_for(tmp_path_factory: pytest.TempPathFactory,
                                                            read_and_reconcile, parts: list[str]) -> None:
    path = _write(tmp_path_factory.mktemp("c"), "r.csv", ("h1,h2\n" + "".join(parts)).encode())
    ledger = read_and_reconcile(path)
