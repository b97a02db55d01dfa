"""Dynamic batching: one worker thread owns the model and decodes queued requests together.

Requests (`Job`s) wait in one bounded FIFO queue. The worker takes the oldest job, waits up to
`batch_window_s` (counted from that job's arrival, so a job that already waited through a previous
batch adds no extra delay) for more jobs for the SAME served model (base or one adapter: a batch
activates one), up to `max_batch_size` rows, and starts decoding them together. Batching is
continuous (`models.running.RunningBatch`): between two decoding steps, jobs at the head of the
queue for the same model join the running batch while rows are free, so a request never waits
for a whole batch to end (a job for another model at the head stops the joining: first come,
first served). Models whose cache cannot take joining rows (prompt/prefix tuning) and
`max_batch_size=1` decode fixed batches through `models.decode.decode_stream`, the decoder eval
and export use. Each step's tokens go straight to each job's `emit` callback (the HTTP layer puts
them on an asyncio queue).

A row leaves the batch as soon as its job is cancelled (the client disconnected, or the HTTP layer
matched a stop string) or its deadline passes: `decode_stream`'s `should_stop` drops it, freeing
its slot for compute. A full queue raises `QueueFull` (the server answers 429); after `close()`
`submit` raises `ShuttingDown` while the worker finishes every job already accepted.

Every event a job receives, in order: `Tokens` (zero or more), then one `Finished` per row, or a
single `Failed` when the batch raised.

    engine = Engine(served.activate, pad_id=codec.pad_id, max_batch_size=8).start()
    engine.submit(Job("base", [[1, 2, 3]], [SamplingParams(max_new_tokens=8)], emit=print))
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from domaintune.models.decode import decode_stream
from domaintune.models.running import RunningBatch, supports
from domaintune.serve.jobs import (Event, Failed, Finished, Job, OpenRows, QueueFull, ShuttingDown, Tokens,
                                   tell)

log = logging.getLogger(__name__)

Activate = Callable[[str], AbstractContextManager[Any]]
TOKEN_REPORT_S = 1.0  # a continuous batch updates the token metrics at least this often
__all__ = ["Engine", "Event", "Failed", "Finished", "Job", "QueueFull", "ShuttingDown", "Tokens"]


class Engine:
    """The batching worker.

    Args:
        activate: `activate(route)` is a context manager that makes that served model current
            and yields the model to decode with (`adapters.ServedModels.activate`).
        pad_id: the padding id for `decode_stream`.
        max_batch_size: most rows decoded together (1 turns batching off).
        batch_window_s: how long the oldest job may wait for others to join its batch.
        max_queue: most jobs waiting (not yet decoding); beyond it `submit` raises `QueueFull`.
        metrics: optional `metrics.ServeMetrics`.
        decode: the fixed-batch decoder (`decode_stream`); replacing it (tests) also turns
            continuous batching off.

    Example:
        >>> engine = Engine(served.activate, pad_id=0).start()   # doctest: +SKIP
        >>> engine.close()                                       # doctest: +SKIP
    """

    def __init__(self, activate: Activate, pad_id: int, *, max_batch_size: int = 8, batch_window_s: float = 0.015,
                 max_queue: int = 64, metrics: Any = None, decode: Callable[..., Any] = decode_stream) -> None:
        if max_batch_size < 1 or max_queue < 1 or batch_window_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and batch_window_s >= 0")
        self.activate, self.pad_id, self.decode, self.metrics = activate, pad_id, decode, metrics
        self.max_batch_size, self.batch_window_s, self.max_queue = max_batch_size, batch_window_s, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="domaintune-engine", daemon=True)

    # ---- the caller's side -------------------------------------------------------------------
    def start(self) -> Engine:
        """Start the worker thread; returns self."""
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        """Queue a job.

        Raises:
            QueueFull: `max_queue` jobs are waiting.
            ShuttingDown: `close()` was called.
        """
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            if len(self._queue) >= self.max_queue:
                raise QueueFull()
            self._queue.append(job)
            self._depth_changed()
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to be decoded."""
        return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting jobs, finish every accepted one, then stop the worker.

        Args:
            timeout: seconds to wait for the worker (None: as long as it takes).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue[0]
            while not self._closing and self._rows_for(first.route) < self.max_batch_size:
                left = first.arrived + self.batch_window_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._take(first.route)
            self._depth_changed()
        return self._live(batch)

    def _rows_for(self, route: str) -> int:
        return sum(len(job.prompts) for job in self._queue if job.route == route)

    def _take(self, route: str) -> list[Job]:
        """Remove the oldest jobs for `route` that fit in one batch (the first always does)."""
        batch, rows, rest = [], 0, deque()
        for job in self._queue:
            fits = not batch or rows + len(job.prompts) <= self.max_batch_size
            if job.route == route and fits:
                batch.append(job)
                rows += len(job.prompts)
            else:
                rest.append(job)
        self._queue = rest
        return batch

    def _live(self, batch: list[Job]) -> list[Job]:
        """Jobs still worth decoding; the others get their Finished events now."""
        now, live = time.monotonic(), []
        for job in batch:
            reason = job.drop_reason(None, now)
            if reason is None:
                live.append(job)
                continue
            for row in range(len(job.prompts)):
                tell(job, Finished(row, reason))
        return live

    def _run(self, jobs: list[Job]) -> None:
        batch = OpenRows(jobs)
        try:
            with self.activate(jobs[0].route) as model:
                if self.max_batch_size > 1 and self.decode is decode_stream and supports(model):
                    self._run_continuous(model, batch, jobs[0].route)
                else:
                    if self.metrics is not None:
                        self.metrics.observe_batch(len(batch.rows))
                    params = list(batch.params.values())  # rows 0..n-1, in order: nothing has finished yet
                    closed = any(p.choices is not None for p in params)  # confidences: closed sets only
                    extra = {"confidences": batch.confidences} if closed else {}
                    for step in self.decode(model, list(batch.prompts.values()), params, self.pad_id,
                                            should_stop=batch.should_stop, **extra):
                        batch.deliver(step)
        except Exception as err:  # noqa: BLE001 - one bad batch must not kill the server
            log.exception("generation failed for a batch of %d rows", len(batch.rows))
            batch.fail(f"generation failed: {type(err).__name__}: {err}")
        else:
            batch.finish_rest()
        self._report_tokens(jobs[0].route, batch)

    def _report_tokens(self, route: str, batch: OpenRows) -> None:
        if self.metrics is not None:
            self.metrics.add_tokens(route, *batch.unreported())

    def _run_continuous(self, model: Any, batch: OpenRows, route: str) -> None:
        running = RunningBatch(model, self.pad_id, confidences=batch.confidences)
        self._admit_jobs(running, batch, list(dict.fromkeys(job for job, _ in batch.rows.values())),
                         range(len(batch.rows)))
        while running:
            batch.deliver(running.pick())
            running.advance(batch.should_stop)
            if batch.unreported_seconds() >= TOKEN_REPORT_S:  # a batch that never drains still reports
                self._report_tokens(route, batch)
            joining = self._joining(route, len(running))
            if joining:
                self._admit_jobs(running, batch, joining, batch.extend(joining))

    def _admit_jobs(self, running: RunningBatch, batch: OpenRows, jobs: list[Job], rows: range) -> None:
        """Admit the rows of `jobs` together; when that fails, each job alone, so only a job that
        fails by itself (a prompt too long for memory, a bad parameter) gets the error. The rows
        already running are unchanged by a failed admission (`RunningBatch.add`) and go on."""
        try:
            self._admit(running, batch, rows)
            return
        except Exception as err:  # noqa: BLE001 - isolated below
            if len(jobs) == 1:
                self._fail_admission(batch, rows, err, len(running))
                return
        start = rows.start
        for job in jobs:
            own, start = range(start, start + len(job.prompts)), start + len(job.prompts)
            try:
                self._admit(running, batch, own)
            except Exception as err:  # noqa: BLE001 - this job fails alone
                self._fail_admission(batch, own, err, len(running))

    @staticmethod
    def _fail_admission(batch: OpenRows, rows: range, err: Exception, running: int) -> None:
        log.exception("a request could not join the batch; %d running rows continue", running, exc_info=err)
        batch.fail(f"generation failed: {type(err).__name__}: {err}", rows)

    def _admit(self, running: RunningBatch, batch: OpenRows, ks: Iterable[int]) -> None:
        ks = [k for k in ks if not batch.is_done(k)]
        empty = [k for k in ks if batch.params[k].max_new_tokens < 1]
        for k in empty:
            batch.finish(k, "length")
        ks = [k for k in ks if k not in empty and not batch.should_stop(k)]
        running.add(ks, [batch.prompts[k] for k in ks], [batch.params[k] for k in ks])
        if self.metrics is not None and ks:
            self.metrics.observe_batch(len(running))

    def _joining(self, route: str, rows: int) -> list[Job]:
        """Jobs at the head of the queue for `route` that fit in the free rows (FIFO: stop at another route)."""
        with self._cond:
            taken = []
            while self._queue and self._queue[0].route == route:
                size = len(self._queue[0].prompts)
                if rows + size > self.max_batch_size:
                    break
                taken.append(self._queue.popleft())
                rows += size
            if taken:
                self._depth_changed()
        return self._live(taken)

    def _depth_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.set_queue_depth(len(self._queue))
