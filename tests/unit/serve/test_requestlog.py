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
