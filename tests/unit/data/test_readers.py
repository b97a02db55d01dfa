"""Tests for domaintune.data.readers: every file type, with line numbers, raw text and error rows."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.readers import FILE_TYPES, RawRow, detect_file_type, read_rows
from domaintune.errors import UserError

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _summary(rows: list[RawRow]) -> list[tuple[int, str | None, dict | None]]:
    return [(r.line, r.error, r.obj) for r in rows]


# --- file types ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.json", "json"), ("a.csv", "csv"), ("a.tsv", "tsv"),
    ("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.txt", "txt"), ("notes.md", "txt"), ("a.text", "txt"),
    ("dir/a.b.jsonl.gz", "jsonl"),
])
def test_detect_file_type(name: str, expected: str) -> None:
    assert detect_file_type(name) == expected
    assert expected in FILE_TYPES


@pytest.mark.parametrize("name", ["data.xlsx", "README", "a.gz"])
def test_detect_file_type_unknown_names_file_and_fix(name: str) -> None:
    with pytest.raises(UserError) as err:
        detect_file_type(name)
    assert name in str(err.value) and "--file-type" in str(err.value) and ".jsonl" in str(err.value)


def test_missing_file_fails_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="input file not found") as err:
        read_rows(str(tmp_path / "nope.jsonl"), "s")   # no iteration: the call itself raises
    assert err.value.file == str(tmp_path / "nope.jsonl") and err.value.hint


@pytest.mark.parametrize("kwargs, word", [({"file_type": "xml"}, "file type"), ({"text_unit": "page"}, "text unit")])
def test_bad_options_are_user_errors(kwargs: dict, word: str) -> None:
    with pytest.raises(UserError, match=word):
        read_rows(str(ASSETS / "doc.txt"), "s", **kwargs)


def test_directory_expands_to_known_files_sorted(tmp_path: Path) -> None:
    _write(tmp_path, "b.jsonl", b'{"text": "b"}\n')
    _write(tmp_path, "a.txt", b"a")
    _write(tmp_path, "skip.xlsx", b"??")
    _write(tmp_path, ".hidden.jsonl", b'{"text": "h"}\n')
    rows = list(read_rows(str(tmp_path), "dir"))
    assert [(Path(r.file).name, r.obj) for r in rows] == [("a.txt", {"text": "a"}), ("b.jsonl", {"text": "b"})]
    only_jsonl = list(read_rows(str(tmp_path), "dir", file_type="jsonl"))
    assert [Path(r.file).name for r in only_jsonl] == ["b.jsonl"]


def test_empty_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no data files"):
        read_rows(str(tmp_path), "s")


# --- JSONL --------------------------------------------------------------------------------------

def test_jsonl_bom_crlf_blank_lines_and_errors(tmp_path: Path) -> None:
    data = (b'\xef\xbb\xbf{"text": "one"}\r\n'
            b"\r\n"
            b'{"text": "caf\xe9"}\r\n'
            b'{"text": \r\n'
            b"   \n"
            b"[1, 2]\n"
            b'{"text": "last"}')   # no final line ending
    path = _write(tmp_path, "x.jsonl", data)
    rows = list(read_rows(path, "src"))
    assert _summary(rows) == [(1, None, {"text": "one"}), (3, "invalid_utf8", None), (4, "invalid_json", None),
                              (6, "not_an_object", None), (7, None, {"text": "last"})]
    assert rows[0] == RawRow("src", path, 1, '{"text": "one"}', {"text": "one"})
    assert rows[1].raw == '{"text": "caf\ufffd"}'
    assert rows[2].raw == '{"text": '


def test_jsonl_lone_surrogate_escape_is_invalid_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.jsonl", b'{"text": "\\ud83d"}\n{"text": "\\ud83d\\ude00 ok"}\n')
    assert _summary(list(read_rows(path, "s"))) == [(1, "invalid_utf8", None), (2, None, {"text": "\U0001F600 ok"})]


@pytest.mark.parametrize("data", [gzip.compress(b'{"text": "a"}\n' * 1000)[:-20], b"not gzip at all"],
                         ids=["truncated", "not-gzip"])
def test_truncated_or_bad_gzip_is_one_user_error(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path, "x.jsonl.gz", data)
    with pytest.raises(UserError) as err:
        list(read_rows(path, "s"))
    assert err.value.file == path and "gzip" in err.value.message and err.value.hint
    assert "\n" not in str(err.value)


def test_jsonl_gzip_and_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"q": "hi", "a": "yo", "id": 1}\n'))
    rows = list(read_rows(str(path), "s", columns={"q": "instruction", "a": "output"}))
    assert rows[0].obj == {"instruction": "hi", "output": "yo", "id": 1}


def test_messy_asset_reader_level(tmp_path: Path) -> None:
    expected = json.loads((ASSETS / "messy.expected.json").read_text(encoding="utf-8"))
    reader_errors = {"invalid_utf8", "invalid_json", "not_an_object"}
    want = [(r["line"], r.get("reason") if r.get("reason") in reader_errors else None) for r in expected["rows"]]
    rows = list(read_rows(str(ASSETS / "messy.jsonl"), "messy"))
    assert [(r.line, r.error) for r in rows] == want
    zh = next(r for r in rows if r.line == 15)
    assert "什么是定金？" in zh.raw and zh.obj["messages"][0]["content"] == "什么是定金？"


def test_messy_asset_is_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_messy", ASSETS / "make_messy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("messy.jsonl", "messy.expected.json"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), f"rerun make_messy.py ({name})"
    data = (ASSETS / "messy.jsonl").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\r\n") > 30


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=12))
def test_jsonl_every_non_blank_line_is_one_row(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]) -> None:
    path = _write(tmp_path_factory.mktemp("h"), "x.jsonl", b"\n".join(lines))
    rows = list(read_rows(path, "s"))
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]   # a BOM is not content
    non_blank = [i for i, line in enumerate(lines, 1) if line.strip(b" \t\x0b\x0c")]
    assert [r.line for r in rows] == non_blank
    assert all((r.obj is None) == (r.error is not None) for r in rows)


# --- JSON ---------------------------------------------------------------------------------------

def test_json_array_gives_each_element_its_line() -> None:
    rows = list(read_rows(str(ASSETS / "sample.json"), "s"))
    assert [(r.line, r.error) for r in rows] == [(2, None), (6, None), (7, "not_an_object"), (8, None)]
    assert rows[0].obj == {"instruction": "Define lease.", "output": "A rental contract."}
    assert rows[2].raw == '"not an object"'
    assert json.loads(rows[3].raw) == rows[3].obj


def test_json_wrapper_object_unwraps_its_lists(tmp_path: Path) -> None:
    text = '{\n "version": 2,\n "data": [\n  {"text": "a"},\n  {"text": "b"}\n ],\n "extra": [{"text": "c"}]\n}'
    rows = list(read_rows(_write(tmp_path, "w.json", text.encode()), "s"))
    assert _summary(rows) == [(4, None, {"text": "a"}), (5, None, {"text": "b"}), (7, None, {"text": "c"})]


def test_json_single_record_object_is_one_row(tmp_path: Path) -> None:
    text = '\xef\xbb\xbf{"messages": [{"role": "user", "content": "hi"}]}\n'.encode("latin-1")
    rows = list(read_rows(_write(tmp_path, "one.json", text), "s"))
    assert _summary(rows) == [(1, None, {"messages": [{"role": "user", "content": "hi"}]})]


def test_json_broken_array_keeps_the_elements_around_the_error(tmp_path: Path) -> None:
    text = b'[\n {"text": "a"},\n {"text": "b",\n {"text": "c"}\n]'
    rows = list(read_rows(_write(tmp_path, "b.json", text), "s"))
    assert _summary(rows) == [(2, None, {"text": "a"}), (3, "invalid_json", None), (4, None, {"text": "c"})]
    assert rows[1].raw == '{"text": "b"'


def test_json_invalid_bytes_reject_only_their_element(tmp_path: Path) -> None:
    rows = list(read_rows(_write(tmp_path, "u.json", b'[{"text": "ok"},\n{"text": "caf\xe9"}]'), "s"))
    assert _summary(rows) == [(1, None, {"text": "ok"}), (2, "invalid_utf8", None)]
    assert rows[1].raw == '{"text": "caf\ufffd"}'


def test_json_that_is_really_jsonl_is_read_by_line(tmp_path: Path) -> None:
    rows = list(read_rows(_write(tmp_path, "l.json", b'{"text": "a"}\n{"text": "b"}\n{oops\n'), "s"))
    assert _summary(rows) == [(1, None, {"text": "a"}), (2, None, {"text": "b"}), (3, "invalid_json", None)]


@pytest.mark.parametrize("text, errors", [(b"nonsense", ["invalid_json"]), (b'"a string"', ["not_an_object"]),
                                          (b"[1]\n[3]", ["not_an_object", "invalid_json"])])
def test_json_bad_top_level_loses_nothing(tmp_path: Path, text: bytes, errors: list[str]) -> None:
    rows = list(read_rows(_write(tmp_path, "t.json", text), "s"))
    assert [r.error for r in rows] == errors
    assert rows[-1].raw == text.decode().rsplit("\n")[-1] and rows[-1].line == text.count(b"\n") + 1


def test_json_empty_file_has_no_rows(tmp_path: Path) -> None:
    assert list(read_rows(_write(tmp_path, "e.json", b" \n"), "s")) == []


# --- CSV / TSV ----------------------------------------------------------------------------------

def test_csv_lines_multiline_cells_mapping_and_short_rows() -> None:
    rows = list(read_rows(str(ASSETS / "sample.csv"), "s", columns={"question": "instruction", "answer": "output"}))
    assert [(r.line, r.error) for r in rows] == [(2, None), (3, None), (5, None), (7, None), (8, None),
                                                 (9, "wrong_column_count")]
    assert rows[1].obj == {"id": "2", "instruction": 'What does "quiet enjoyment" mean?',
                           "output": "The tenant's right to use the property\nwithout interference, from the landlord.",
                           "domain": "legal"}
    assert rows[1].raw.count("\n") == 1 and rows[1].raw.startswith('2,"What does ""quiet')
    assert rows[2].obj["output"] == ""
    assert rows[3].obj == {"id": "4", "instruction": "中文问题？", "output": "中文回答。", "domain": "法律"}
    assert rows[4].obj == {"id": "5", "instruction": "Short row", "output": "", "domain": ""}
    assert rows[5].raw == "6,a,b,c,extra"


def test_csv_bom_crlf_and_invalid_utf8(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbftext,n\r\n"multi\r\nline",1\r\nbad \xff byte,2\r\nfine,3\r\n'
    rows = list(read_rows(_write(tmp_path, "c.csv", data), "s"))
    assert _summary(rows) == [(2, None, {"text": "multi\r\nline", "n": "1"}), (4, "invalid_utf8", None),
                              (5, None, {"text": "fine", "n": "3"})]
    assert rows[1].raw == "bad \ufffd byte,2"


def test_tsv_json_conversation_cells_and_empty_ones() -> None:
    rows = list(read_rows(str(ASSETS / "sample.tsv"), "s"))
    assert rows[0].obj == {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert rows[1].obj["input"] == ""
    assert rows[2].obj["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_csv_header_problems_are_user_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.csv", b"a,b,a\n1,2,3\n")
    with pytest.raises(UserError, match="duplicate column"):
        list(read_rows(path, "s"))
    path = _write(tmp_path, "m.csv", b"q,a\n1,2\n")
    with pytest.raises(UserError, match="not in the header") as err:
        list(read_rows(path, "s", columns={"question": "instruction"}))
    assert "q, a" in str(err.value)


def test_csv_long_cell_and_header_only(tmp_path: Path) -> None:
    long = "x" * 300_000   # beyond csv's default 128 KiB field limit
    rows = list(read_rows(_write(tmp_path, "l.csv", f"text\n{long}\n".encode()), "s"))
    assert rows[0].obj == {"text": long}
    assert list(read_rows(_write(tmp_path, "h.csv", b"text\n"), "s")) == []
    rows = list(read_rows(_write(tmp_path, "e.csv", b"text,n\n,\n , \nx,1\n"), "s"))   # blank cells: rejects
    assert _summary(rows) == [(2, "empty_row", None), (3, "empty_row", None), (4, None, {"text": "x", "n": "1"})]


# --- Parquet ------------------------------------------------------------------------------------

def test_parquet_rows_batches_and_types(tmp_path: Path) -> None:
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 5000   # more than one record batch
    msgs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]
    table = pa.table({"messages": msgs, "id": list(range(n)),
                      "when": [datetime.date(2024, 1, 2)] * n, "note": [None] * (n - 1) + ["last"]})
    path = str(tmp_path / "p.parquet")
    pq.write_table(table, path)
    rows = list(read_rows(path, "s", columns={"note": "comment"}))
    assert len(rows) == n and [r.line for r in rows[:3]] == [1, 2, 3] and rows[-1].line == n
    assert rows[0].obj == {"messages": msgs[0], "id": 0, "when": "2024-01-02", "comment": None}
    assert json.loads(rows[-1].raw) == rows[-1].obj and rows[-1].obj["comment"] == "last"


def test_parquet_unreadable_file_is_a_user_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.parquet", b"not parquet")
    with pytest.raises(UserError, match="cannot read the parquet file"):
        list(read_rows(path, "s"))


# --- TXT ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit, lines", [("file", [1]), ("paragraph", [1, 4, 8]), ("line", [1, 2, 4, 5, 8])])
def test_txt_units_and_their_lines(unit: str, lines: list[int]) -> None:
    rows = list(read_rows(str(ASSETS / "doc.txt"), "s", text_unit=unit))
    assert [r.line for r in rows] == lines
    assert rows[-1].obj["text"].endswith("第三段：租赁。")


def test_txt_bom_crlf_and_invalid_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.txt", b"\xef\xbb\xbfone\r\ntwo\r\n\r\nbad \xff\r\n")
    assert _summary(list(read_rows(path, "s", text_unit="paragraph"))) == [
        (1, None, {"text": "one\ntwo"}), (4, "invalid_utf8", None)]
    assert [r.obj for r in read_rows(path, "s", text_unit="line")][:2] == [{"text": "one"}, {"text": "two"}]
    whole = list(read_rows(path, "s"))
    assert _summary(whole) == [(1, "invalid_utf8", None)] and whole[0].raw == "one\ntwo\n\nbad \ufffd"


def test_txt_file_unit_normalizes_crlf_and_skips_empty(tmp_path: Path) -> None:
    rows = list(read_rows(_write(tmp_path, "a.md", b"# T\r\n\r\nbody\r\n"), "s"))
    assert _summary(rows) == [(1, None, {"text": "# T\n\nbody"})]
    assert list(read_rows(_write(tmp_path, "e.txt", b"\n \n"), "s")) == []
