"""prepare's files: written whole or not at all, one clear line on a read or write failure, every
physical input record reconciled, and JSON Lines that every reader splits on "\\n" only."""

from __future__ import annotations

import errno
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from domaintune import api
from domaintune.config import load_recipe
from domaintune.errors import UserError


def run(tmp_path: Path, inputs: list[dict], out: Path | None = None, **prepare) -> tuple[dict, Path]:
    out = out or tmp_path / "out"
    recipe = load_recipe(None, base={"model": {"name": "none"},
                                     "prepare": {"inputs": inputs, "output_dir": str(out), **prepare}})
    return api.prepare(recipe, progress=False), out


def chat(i: int, **meta) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i} about item {i * 31}"},
                         {"role": "assistant", "content": f"answer {i}: value {i * 17} units"}], **meta}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_json_array_with_a_bad_element_reconciles_every_record(tmp_path):
    records = [json.dumps(chat(i)) for i in range(100)]
    records[5] = records[5][:-1] + ",}"                     # a trailing comma inside element 6
    data = tmp_path / "a.json"
    data.write_text("[\n" + ",\n".join(records) + "\n]\n", encoding="utf-8")
    report, out = run(tmp_path, [{"path": str(data)}], dedup={"near": False})
    totals = report["totals"]
    assert totals["rows_in"] == 100 and totals["balanced"]
    assert totals["kept"] == 99 and report["reject_reasons"] == {"invalid_json": 1}
    reject = json.loads((out / "rejects.jsonl").read_text(encoding="utf-8"))
    assert reject["line"] == 7 and reject["reason"] == "invalid_json" and "line 7" in reject["detail"]


def test_failed_run_leaves_the_previous_outputs_whole(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [chat(i) for i in range(50)])
    _, out = run(tmp_path, [{"path": good}])
    before = snapshot(out)
    broken = tmp_path / "more.jsonl.gz"
    broken.write_bytes(gzip.compress(b"".join(json.dumps(chat(i)).encode() + b"\n" for i in range(50, 2000)))[:-64])
    with pytest.raises(UserError, match="gzip") as err:
        run(tmp_path, [{"path": good}, {"path": str(broken)}])
    assert err.value.file == str(broken)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "more.jsonl.gz", "out"]


def test_failed_first_run_leaves_no_output_folder(tmp_path):
    broken = tmp_path / "x.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(UserError):
        run(tmp_path, [{"path": str(broken)}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl.gz"]


def test_full_disk_is_one_user_error_and_keeps_the_previous_outputs(tmp_path, monkeypatch):
    from domaintune.data import prepare as pipeline

    good = write_jsonl(tmp_path / "good.jsonl", [chat(i) for i in range(30)])
    _, out = run(tmp_path, [{"path": good}])
    (out / "notes.txt").write_text("mine", encoding="utf-8")      # a file prepare does not own
    before = snapshot(out)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_report", no_space)
    with pytest.raises(UserError) as err:
        run(tmp_path, [{"path": good}], seed=4)
    message = str(err.value)
    assert "No space left on device" in message and "disk" in err.value.hint and "\n" not in message
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "out"]


def test_a_new_run_replaces_prepare_files_and_keeps_foreign_ones(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(30)])
    _, out = run(tmp_path, [{"path": a}])
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    b = write_jsonl(tmp_path / "b.jsonl", [chat(i) for i in range(100, 110)])
    report, _ = run(tmp_path, [{"path": b}])
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert report["totals"]["rows_in"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out"]


def test_file_size_limit_exits_2_with_one_line(tmp_path):
    data = write_jsonl(tmp_path / "big.jsonl", [chat(i, note="x" * 200) for i in range(2000)])
    out = tmp_path / "out"
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from domaintune.cli import main\n"
        f"sys.exit(main(['prepare', {data!r}, '-o', {str(out)!r}, '--model', 'none', '-q']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "ulimit" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]


LINE_BREAKERS = "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci"


def test_prepared_files_with_unicode_line_separators_load_back(tmp_path):
    from domaintune.train.data import load_split

    rows = [chat(i, note=f"{LINE_BREAKERS} {i}") for i in range(20)]
    rows[3]["messages"][1]["content"] += " \u2028 and \u2029"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    report, out = run(tmp_path, [{"path": data}], split={"train": 1.0, "val": 0.0, "test": 0.0},
                      clean={"nfkc": False, "fold_whitespace": False, "strip_control": False})
    assert report["totals"]["kept"] == 20
    split = load_split(out / "train.jsonl")
    assert len(split) == 20 and {r["metadata"]["note"] for r in split} == {n["note"] for n in rows}


def test_eval_predictions_with_unicode_line_separators_read_back(tmp_path):
    from domaintune.eval.evaluate import PREDICTIONS_FILE, REPORT_FILE, read_eval

    (tmp_path / REPORT_FILE).write_text("{}", encoding="utf-8")
    rows = [{"prediction": LINE_BREAKERS, "reference": "r"}, {"prediction": "p\r\n", "reference": "s"}]
    (tmp_path / PREDICTIONS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows),
                                             encoding="utf-8", newline="")
    assert read_eval(tmp_path).predictions == rows
