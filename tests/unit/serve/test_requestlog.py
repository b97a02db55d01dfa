"""Tests for serve/requestlog.py: one JSON object per line, appended, safe across threads."""

from __future__ import annotations

import json
import threading

import pytest

from domaintune.errors import UserError
from domaintune.serve.requestlog import RequestLog, now_iso


def test_lines_are_appended_from_many_threads(tmp_path):
    path = tmp_path / "logs" / "requests.jsonl"
    log = RequestLog(path)

    def write(i):
        for j in range(50):
            log.write({"i": i, "j": j, "output": ["多语言 text"]})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    log.write({"after": "close"})  # dropped, not an error
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 200 and {(r["i"], r["j"]) for r in records} == {(i, j) for i in range(4) for j in range(50)}
    assert records[0]["output"] == ["多语言 text"]
    RequestLog(path).write({"again": 1})
    assert len(path.read_text(encoding="utf-8").splitlines()) == 201  # reopening appends


def test_unwritable_path_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="request log"):
        RequestLog(blocker / "requests.jsonl")


def test_timestamps_are_utc_iso_and_can_point_back_to_the_arrival():
    from datetime import datetime

    now, earlier = datetime.fromisoformat(now_iso()), datetime.fromisoformat(now_iso(ago_s=60))
    assert now_iso().endswith("+00:00") and 59 < (now - earlier).total_seconds() < 61


def test_prompts_and_outputs_are_masked_unless_raw(tmp_path):
    record = {"prompt": [{"role": "user", "content": "mail me at ann.lee@example.com"}],
              "output": ["call 415-555-0134"], "error": None, "status": 200}
    masked, raw = tmp_path / "masked.jsonl", tmp_path / "raw.jsonl"
    RequestLog(masked).write(record)
    RequestLog(raw, raw=True).write(record)
    text = masked.read_text(encoding="utf-8")
    assert "ann.lee@example.com" not in text and "415-555-0134" not in text and "<EMAIL>" in text
    assert "ann.lee@example.com" in raw.read_text(encoding="utf-8")


def test_the_file_is_owner_only_even_when_it_existed(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("")
    path.chmod(0o644)
    RequestLog(path).write({"status": 200})
    assert path.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "fresh.jsonl"
    RequestLog(fresh).write({"status": 200})
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_backups_and_loses_no_line_within_them(tmp_path):
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path, max_bytes=400, backups=2)
    for i in range(30):
        assert log.write({"i": i, "output": ["x" * 40]})
    log.close()
    files = [path, path.with_name("requests.jsonl.1"), path.with_name("requests.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("requests.jsonl.3").exists()
    assert all(f.stat().st_size <= 400 for f in files)
    kept = [json.loads(line)["i"] for f in reversed(files) for line in f.read_text(encoding="utf-8").splitlines()]
    assert 12 <= len(kept) < 30 and kept == list(range(30 - len(kept), 30))  # the newest lines, in order, none repeated


def test_a_failed_write_is_counted_and_never_raises(tmp_path):
    errors = []
    log = RequestLog(tmp_path / "requests.jsonl", on_error=errors.append)

    class FullDisk:
        closed = False

        def tell(self):
            return 0

        def write(self, _line):
            raise OSError(28, "No space left on device")

    log._file = FullDisk()
    assert log.write({"status": 200}) is False
    assert len(errors) == 1 and errors[0].errno == 28
