"""Tests for serve/engine.py: batch formation, limits, cancellation, deadlines, failures, drain.

The model is replaced by `ScriptedDecode`, a stand-in with decode_stream's contract (rows drop on
stop ids, max_new_tokens or should_stop) that records every batch it is given, so the tests can
assert exactly which jobs were decoded together. Agreement with the real decoder is tested in
test_app.py (batched vs unbatched greedy outputs through the whole server).
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from domaintune.models.decode import SamplingParams
from domaintune.serve.engine import Engine, Failed, Finished, Job, QueueFull, ShuttingDown, Tokens


class ScriptedDecode:
    """Row r emits prompt[0] * 100 + step at each step; optionally sleeps per step or fails."""

    def __init__(self, step_s: float = 0.0, fail_after: int | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []  # (route, first prompt id of each row)
        self.step_s, self.fail_after = step_s, fail_after
        self.steps = 0

    def __call__(self, model, prompts, params, pad_id, *, should_stop):
        self.batches.append((model, [p[0] for p in prompts]))
        return self._run(prompts, params, should_stop)

    def _run(self, prompts, params, should_stop):
        running = [r for r in range(len(prompts)) if not should_stop(r)]
        step = 0
        while running:
            if self.fail_after is not None and step >= self.fail_after:
                raise RuntimeError("boom")
            time.sleep(self.step_s)
            out = [(r, prompts[r][0] * 100 + step) for r in running]
            self.steps += 1
            yield out
            step += 1
            running = [r for r, t in out if t not in params[r].stop_ids and step < params[r].max_new_tokens
                       and not should_stop(r)]


class Collector:
    """A job's emit callback: records events, signals when every row is done."""

    def __init__(self, rows: int) -> None:
        self.events: list = []
        self.rows, self.done = rows, threading.Event()
        self.on_tokens = None

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Tokens) and self.on_tokens:
            self.on_tokens()
        finished = sum(isinstance(e, Finished) for e in self.events)
        if finished == self.rows or isinstance(event, Failed):
            self.done.set()

    def tokens(self, row: int = 0) -> list[int]:
        return [t for e in self.events if isinstance(e, Tokens) for r, t in e.pairs if r == row]

    def reasons(self) -> dict[int, str]:
        return {e.row: e.reason for e in self.events if isinstance(e, Finished)}


@contextlib.contextmanager
def route(name):
    yield name  # the "model" handed to decode is the route's name, so batches show their route


def job(first_id: int, route_name: str = "base", rows: int = 1, max_new: int = 3, **kwargs) -> tuple[Job, Collector]:
    sink = Collector(rows)
    params = [SamplingParams(max_new_tokens=max_new, stop_ids=(7,))] * rows
    return Job(route_name, [[first_id + i] for i in range(rows)], params, sink, **kwargs), sink


def engine(decode, **kwargs) -> Engine:
    return Engine(route, pad_id=0, decode=decode, **kwargs)


def wait(*sinks: Collector, timeout: float = 10.0) -> None:
    for sink in sinks:
        assert sink.done.wait(timeout), sink.events


def test_jobs_waiting_together_share_one_batch():
    decode = ScriptedDecode()
    eng = engine(decode, max_batch_size=8)
    pairs = [job(i) for i in (1, 2, 3)]
    for j, _ in pairs:
        eng.submit(j)
    eng.start()
    wait(*(s for _, s in pairs))
    eng.close()
    assert decode.batches == [("base", [1, 2, 3])]
    for i, (_, sink) in zip((1, 2, 3), pairs):
        assert sink.tokens() == [i * 100, i * 100 + 1, i * 100 + 2]
        assert sink.reasons() == {0: "length"}


def test_batches_respect_max_batch_size_in_rows():
    decode = ScriptedDecode()
    eng = engine(decode, max_batch_size=3)
    pairs = [job(1, rows=2), job(10, rows=2), job(20), job(30, rows=5)]
    for j, _ in pairs:
        eng.submit(j)
    eng.start()
    wait(*(s for _, s in pairs))
    eng.close()
    # Job 10 does not fit beside job 1, job 20 does (FIFO, first fit); a 5-row job runs alone.
    assert [rows for _, rows in decode.batches] == [[1, 2, 20], [10, 11], [30, 31, 32, 33, 34]]


def test_one_batch_holds_one_route():
    decode = ScriptedDecode()
    eng = engine(decode)
    pairs = [job(1, "a"), job(2, "b"), job(3, "a")]
    for j, _ in pairs:
        eng.submit(j)
    eng.start()
    wait(*(s for _, s in pairs))
    eng.close()
    assert decode.batches == [("a", [1, 3]), ("b", [2])]


def test_window_lets_a_later_request_join():
    decode = ScriptedDecode()
    eng = engine(decode, batch_window_s=1.0, max_batch_size=2).start()
    first, s1 = job(1)
    second, s2 = job(2)
    eng.submit(first)
    time.sleep(0.05)
    eng.submit(second)  # fills the batch: no need to wait out the window
    wait(s1, s2)
    eng.close()
    assert decode.batches == [("base", [1, 2])]


def test_full_queue_refuses_and_close_drains_then_refuses():
    decode = ScriptedDecode()
    eng = engine(decode, max_queue=2)
    pairs = [job(1), job(2)]
    for j, _ in pairs:
        eng.submit(j)
    assert eng.queue_depth == 2
    with pytest.raises(QueueFull):
        eng.submit(job(3)[0])
    eng.start()
    eng.close()  # accepted jobs are finished before the worker stops
    assert all(s.reasons() == {0: "length"} for _, s in pairs)
    with pytest.raises(ShuttingDown):
        eng.submit(job(4)[0])


def test_cancel_drops_only_that_job_and_frees_its_rows():
    decode = ScriptedDecode()
    eng = engine(decode)
    gone, s_gone = job(1, max_new=10_000)
    stay, s_stay = job(2, max_new=50)
    s_gone.on_tokens = gone.cancel  # the client disconnects after its first token
    eng.submit(gone)
    eng.submit(stay)
    eng.start()
    wait(s_gone, s_stay)
    eng.close()
    assert s_gone.reasons() == {0: "cancelled"} and len(s_gone.tokens()) == 1
    assert s_stay.reasons() == {0: "length"} and len(s_stay.tokens()) == 50
    assert decode.steps == 50  # the cancelled row stopped costing steps at once


def test_stop_row_ends_one_row_of_a_job():
    decode = ScriptedDecode()
    eng = engine(decode)
    j, sink = job(1, rows=2, max_new=20)
    sink.on_tokens = lambda: j.stop_row(1)
    eng.submit(j)
    eng.start()
    wait(sink)
    eng.close()
    assert sink.reasons() == {0: "length", 1: "stop"}
    assert len(sink.tokens(0)) == 20 and len(sink.tokens(1)) == 1


def test_stop_id_finishes_with_stop():
    decode = ScriptedDecode()
    eng = engine(decode)
    j, sink = job(0, max_new=20)  # row 0 emits 0, 1, 2, ... and 7 is its stop id
    eng.submit(j)
    eng.start()
    wait(sink)
    eng.close()
    assert sink.tokens() == list(range(8)) and sink.reasons() == {0: "stop"}


def test_deadlines_drop_queued_and_running_rows():
    decode = ScriptedDecode(step_s=0.01)
    eng = engine(decode)
    late, s_late = job(1, deadline=time.monotonic() - 1)
    slow, s_slow = job(2, max_new=10_000, deadline=time.monotonic() + 0.2)
    eng.submit(late)
    eng.submit(slow)
    eng.start()
    wait(s_late, s_slow)
    eng.close()
    assert s_late.reasons() == {0: "deadline"} and s_late.tokens() == []
    assert s_slow.reasons() == {0: "deadline"} and 0 < len(s_slow.tokens()) < 10_000
    assert decode.batches == [("base", [2])]  # the expired job never reached the model


def test_a_failing_batch_fails_its_jobs_and_the_worker_goes_on():
    decode = ScriptedDecode(fail_after=1)
    eng = engine(decode).start()
    j, sink = job(1)
    eng.submit(j)
    wait(sink)
    assert isinstance(sink.events[-1], Failed) and "boom" in sink.events[-1].message
    decode.fail_after = None
    j2, sink2 = job(2)
    eng.submit(j2)
    wait(sink2)
    eng.close()
    assert sink2.reasons() == {0: "length"}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Engine(route, pad_id=0, max_batch_size=0)


def test_a_failing_emit_callback_does_not_stop_the_worker():
    def broken(_event):
        raise RuntimeError("event loop is closed")

    eng = engine(ScriptedDecode()).start()
    eng.submit(Job("base", [[1]], [SamplingParams(max_new_tokens=3)], broken))
    j, sink = job(2)
    eng.submit(j)
    wait(sink)
    eng.close()
    assert sink.reasons() == {0: "length"}
