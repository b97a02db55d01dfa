"""The traffic store (data.store) on SQLite: what serve hands it is stored whole and masked, feedback
needs a stored id, retention prunes, an outage is retried and an unreachable URL is one clear error."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domaintune.data.store import Store, UnknownRequest, store_url
from domaintune.errors import UserError


def _record(i: int, **extra) -> dict:
    return {"ts": datetime.now(timezone.utc).isoformat(), "id": f"chatcmpl-{i}", "endpoint": "chat.completions",
            "model": "icd", "prompt": [{"role": "user", "content": f"case {i}: mail jane.doe@example.com"}],
            "output": ["cardiology"], "finish_reasons": ["stop"], "confidences": [0.8], "prompt_tokens": 12,
            "completion_tokens": 3, "latency_s": 0.25, "status": 200, "error": None, "cached": False,
            "stream": False, **extra}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "sub" / "traffic.db")
    yield s
    s.close()


def test_records_are_stored_masked_and_read_back(store):
    for i in range(5):
        assert store.write(_record(i))
    assert not store.write(_record(9, id=None))  # refused before it had an id: nothing to give feedback on
    assert store.flush()
    rows = store.requests()
    assert [r["id"] for r in rows] == [f"chatcmpl-{i}" for i in range(5)]
    assert rows[0]["output"] == ["cardiology"] and rows[0]["confidences"] == [0.8]
    assert "jane.doe" not in rows[0]["prompt"][0]["content"] and "<EMAIL>" in rows[0]["prompt"][0]["content"]
    assert rows[0]["ts"].tzinfo is not None and store.requests(model="other") == []


def test_feedback_needs_a_stored_id_and_is_masked(store):
    store.write(_record(1))
    fid = store.add_feedback("chatcmpl-1", 1, correction="call +1 212 555 0100", comment="fine")
    [fb] = store.feedback()
    assert fb["id"] == fid and fb["request_id"] == "chatcmpl-1" and "555" not in fb["correction"]
    with pytest.raises(UnknownRequest):
        store.add_feedback("chatcmpl-none", -1)


def test_retention_prunes_old_requests_and_their_feedback(tmp_path, monkeypatch):
    import domaintune.data.store as store_module

    monkeypatch.setattr(store_module, "PRUNE_EVERY_S", float("inf"))  # no pruning behind the test's back
    s = Store(tmp_path / "t.db", retention_days=7)
    try:
        old = (datetime.now(timezone.utc) - timedelta(days=8)).isoformat()
        s.write(_record(1, ts=old))
        s.write(_record(2))
        s.add_feedback("chatcmpl-1", 5)
        assert s.prune() == 1
        assert [r["id"] for r in s.requests()] == ["chatcmpl-2"] and s.feedback() == []
    finally:
        s.close()


def test_an_outage_is_retried_and_counted(tmp_path, monkeypatch):
    import domaintune.data.store as store_module

    errors = []
    s = Store(tmp_path / "t.db", on_error=errors.append)
    monkeypatch.setattr(store_module, "RETRY_S", 0.01)
    real, calls = s.engine.begin, []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("database down")
        return real()

    monkeypatch.setattr(s.engine, "begin", flaky)
    try:
        s.write(_record(1))
        assert s.flush(5.0)
        monkeypatch.setattr(s.engine, "begin", real)
        assert [r["id"] for r in s.requests()] == ["chatcmpl-1"] and len(errors) == 2
    finally:
        s.close()


def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path, monkeypatch):
    s = Store(tmp_path / "t.db", max_queue=2)
    gate = __import__("threading").Event()
    real = s.engine.begin

    def held():
        gate.wait(5)
        return real()

    monkeypatch.setattr(s.engine, "begin", held)
    try:
        for i in range(6):
            s.write(_record(i))
        gate.set()
        assert s.flush(5.0)
        monkeypatch.setattr(s.engine, "begin", real)
        stored = [r["id"] for r in s.requests()]
        assert s.dropped >= 3 and len(stored) == 6 - s.dropped and stored[-1] == "chatcmpl-5"
    finally:
        s.close()


def test_urls_and_unreachable_databases(tmp_path):
    assert store_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert store_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(UserError, match="cannot open the store"):
        Store("sqlite:////proc/no/such/dir/x.db")
    with pytest.raises(UserError, match="cannot open the store") as err:
        Store("postgresql+psycopg://user:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value)
