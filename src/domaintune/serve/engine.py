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
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from domaintune.models.decode import SamplingParams, decode_stream
from domaintune.models.running import RunningBatch, supports

log = logging.getLogger(__name__)

Activate = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Tokens:
    """Tokens produced in one decoding step for one job: `(row, token_id)` pairs."""

    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Finished:
    """One row of a job is done: reason "stop", "length", "cancelled" or "deadline"; `confidence` is
    its answer's probability when it was decoded inside a closed answer set."""

    row: int
    reason: str
    confidence: float | None = None


@dataclass(frozen=True)
class Failed:
    """Generation failed for the whole job."""

    message: str


Event = Tokens | Finished | Failed


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already; try again later."""


class ShuttingDown(Exception):
    """The engine was closed and accepts no new jobs."""


@dataclass(eq=False)
class Job:
    """One request: one or more rows (choices) decoded for one served model.

    Args:
        route: the served model's name (the base or an adapter).
        prompts: prompt ids, one list per row.
        params: sampling settings, one per row.
        emit: called from the worker thread with each `Event`; must be quick and thread-safe.
        deadline: `time.monotonic()` after which the job's rows are dropped (None: no deadline).
    """

    route: str
    prompts: Sequence[Sequence[int]]
    params: Sequence[SamplingParams]
    emit: Callable[[Event], None]
    deadline: float | None = None
    arrived: float = field(default_factory=time.monotonic)
    stopped: set[int] = field(default_factory=set)
    cancelled: bool = False

    def cancel(self) -> None:
        """Drop every row (the client went away)."""
        self.cancelled = True

    def stop_row(self, row: int) -> None:
        """Drop one row (its text hit a stop string)."""
        self.stopped.add(row)

    def drop_reason(self, row: int | None, now: float) -> str | None:
        """Why this row (None: the job as a whole) should stop now, or None to keep decoding it."""
        if self.cancelled:
            return "cancelled"
        if row is not None and row in self.stopped:
            return "stop"
        if self.deadline is not None and now > self.deadline:
            return "deadline"
        return None


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
        batch = _Batch(jobs)
        start = time.perf_counter()
        try:
            with self.activate(jobs[0].route) as model:
                if self.max_batch_size > 1 and self.decode is decode_stream and supports(model):
                    self._run_continuous(model, batch, jobs[0].route)
                else:
                    if self.metrics is not None:
                        self.metrics.observe_batch(len(batch.rows))
                    closed = any(p.choices is not None for p in batch.params)  # confidences: closed sets only
                    extra = {"confidences": batch.confidences} if closed else {}
                    for step in self.decode(model, batch.prompts, batch.params, self.pad_id,
                                            should_stop=batch.should_stop, **extra):
                        batch.deliver(step)
        except Exception as err:  # noqa: BLE001 - one bad batch must not kill the server
            log.exception("generation failed for a batch of %d rows", len(batch.rows))
            batch.fail(f"generation failed: {type(err).__name__}: {err}")
        else:
            batch.finish_rest()
        if self.metrics is not None:
            self.metrics.add_tokens(jobs[0].route, batch.generated, time.perf_counter() - start)

    def _run_continuous(self, model: Any, batch: _Batch, route: str) -> None:
        running = RunningBatch(model, self.pad_id, confidences=batch.confidences)
        self._admit(running, batch, range(len(batch.rows)))
        while running:
            batch.deliver(running.pick())
            running.advance(batch.should_stop)
            joining = self._joining(route, len(running))
            if joining:
                self._admit(running, batch, batch.extend(joining))

    def _admit(self, running: RunningBatch, batch: _Batch, ks: Iterable[int]) -> None:
        ks = [k for k in ks if not batch.done[k]]
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


class _Batch:
    """The rows of one decode call, mapped back to their jobs."""

    def __init__(self, jobs: list[Job]) -> None:
        self.rows: list[tuple[Job, int]] = []
        self.prompts: list[Sequence[int]] = []
        self.params: list[SamplingParams] = []
        self.counts: list[int] = []
        self.done: list[bool] = []
        self.confidences: dict[int, float] = {}  # row -> answer probability, for closed-set rows
        self.generated = 0
        self.extend(jobs)

    def extend(self, jobs: list[Job]) -> range:
        """Add the rows of `jobs` (joining a running batch); returns their row indices."""
        start = len(self.rows)
        self.rows += [(job, i) for job in jobs for i in range(len(job.prompts))]
        self.prompts += [job.prompts[i] for job, i in self.rows[start:]]
        self.params += [job.params[i] for job, i in self.rows[start:]]
        self.counts += [0] * (len(self.rows) - start)
        self.done += [False] * (len(self.rows) - start)
        return range(start, len(self.rows))

    def should_stop(self, k: int) -> bool:
        job, i = self.rows[k]
        reason = job.drop_reason(i, time.monotonic())
        if reason is not None:
            self.finish(k, reason)
        return reason is not None

    def deliver(self, step: Sequence[tuple[int, int]]) -> None:
        per_job: dict[int, tuple[Job, list[tuple[int, int]]]] = {}
        for k, token in step:
            job, i = self.rows[k]
            per_job.setdefault(id(job), (job, []))[1].append((i, token))
            self.counts[k] += 1
        self.generated += len(step)
        for job, pairs in per_job.values():  # one event per job per step, not one per token
            tell(job, Tokens(tuple(pairs)))
        for k, token in step:
            if token in self.params[k].stop_ids:
                self.finish(k, "stop")
            elif self.counts[k] >= self.params[k].max_new_tokens:
                self.finish(k, "length")

    def finish_rest(self) -> None:
        # A row the decoder ended silently (max_new_tokens 0) still owes its job a Finished.
        for k in range(len(self.rows)):
            self.finish(k, "length")

    def fail(self, message: str) -> None:
        for job in {id(job): job for job, _ in self.rows}.values():
            if not all(self.done[k] for k, (j, _) in enumerate(self.rows) if j is job):
                tell(job, Failed(message))
        self.done = [True] * len(self.rows)

    def finish(self, k: int, reason: str) -> None:
        """End row `k` with `reason` (once)."""
        if not self.done[k]:
            self.done[k] = True
            job, i = self.rows[k]
            tell(job, Finished(i, reason, self.confidences.get(k)))


def tell(job: Job, event: Event) -> None:
    """Deliver an event; a job whose callback fails is cancelled, never the whole batch."""
    try:
        job.emit(event)
    except Exception:  # noqa: BLE001 - one broken listener must not cost the others their results
        log.exception("dropping a job whose event callback failed")
        job.cancel()
