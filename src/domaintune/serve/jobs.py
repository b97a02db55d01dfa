"""What the engine queues and tells: a `Job`, its events, and the open rows of one decode call.

A job receives, in order: `Tokens` (zero or more), then one `Finished` per row, or a single
`Failed` when its rows could not be decoded. `OpenRows` maps the row numbers a decoder sees back
to (job, row) and forgets a row as soon as it finishes, so a continuous batch that never drains
holds only what is running. `serve/engine.py` owns the queue and the worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from domaintune.models.decode import SamplingParams

log = logging.getLogger(__name__)


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


class OpenRows:
    """The open rows of one decode call, keyed by row number and mapped back to their jobs.

    A finished row is forgotten at once (its job, prompt and parameters), so a continuous batch
    that runs for days while traffic never stops holds only what is running.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self.rows: dict[int, tuple[Job, int]] = {}
        self.prompts: dict[int, Sequence[int]] = {}
        self.params: dict[int, SamplingParams] = {}
        self.counts: dict[int, int] = {}
        self.confidences: dict[int, float] = {}  # row -> answer probability, for closed-set rows
        self.generated = 0
        self._next = 0
        self._reported, self._reported_at = 0, time.perf_counter()
        self.extend(jobs)

    def unreported_seconds(self) -> float:
        return time.perf_counter() - self._reported_at

    def unreported(self) -> tuple[int, float]:
        """Tokens generated, and seconds passed, since the last call (for the token metrics)."""
        now = time.perf_counter()
        out = (self.generated - self._reported, now - self._reported_at)
        self._reported, self._reported_at = self.generated, now
        return out

    def extend(self, jobs: list[Job]) -> range:
        """Add the rows of `jobs` (joining a running batch); returns their row numbers."""
        start = self._next
        for job in jobs:
            for i in range(len(job.prompts)):
                k, self._next = self._next, self._next + 1
                self.rows[k], self.prompts[k], self.params[k], self.counts[k] = (job, i), job.prompts[i], \
                    job.params[i], 0
        return range(start, self._next)

    def is_done(self, k: int) -> bool:
        return k not in self.rows

    def should_stop(self, k: int) -> bool:
        if k not in self.rows:
            return True
        job, i = self.rows[k]
        reason = job.drop_reason(i, time.monotonic())
        if reason is not None:
            self.finish(k, reason)
        return reason is not None

    def deliver(self, step: Sequence[tuple[int, int]]) -> None:
        step = [(k, token) for k, token in step if k in self.rows]
        per_job: dict[int, tuple[Job, list[tuple[int, int]]]] = {}
        for k, token in step:
            job, i = self.rows[k]
            per_job.setdefault(id(job), (job, []))[1].append((i, token))
            self.counts[k] += 1
        self.generated += len(step)
        for job, pairs in per_job.values():  # one event per job per step, not one per token
            tell(job, Tokens(tuple(pairs)))
        for k, token in step:
            if k not in self.rows:
                continue
            if token in self.params[k].stop_ids:
                self.finish(k, "stop")
            elif self.counts[k] >= self.params[k].max_new_tokens:
                self.finish(k, "length")

    def finish_rest(self) -> None:
        # A row the decoder ended silently (max_new_tokens 0) still owes its job a Finished.
        for k in list(self.rows):
            self.finish(k, "length")

    def fail(self, message: str, ks: Iterable[int] | None = None) -> None:
        """End the open rows among `ks` (default: all) with `Failed`, told once to each of their jobs."""
        ks = [k for k in (list(self.rows) if ks is None else ks) if k in self.rows]
        for job in {id(self.rows[k][0]): self.rows[k][0] for k in ks}.values():
            tell(job, Failed(message))
        for k in ks:
            self._forget(k)

    def finish(self, k: int, reason: str) -> None:
        """End row `k` with `reason` (once)."""
        if k in self.rows:
            job, i = self.rows[k]
            confidence = self.confidences.get(k)
            self._forget(k)
            tell(job, Finished(i, reason, confidence))

    def _forget(self, k: int) -> None:
        for table in (self.rows, self.prompts, self.params, self.counts, self.confidences):
            table.pop(k, None)


def tell(job: Job, event: Event) -> None:
    """Deliver an event; a job whose callback fails is cancelled, never the whole batch."""
    try:
        job.emit(event)
    except Exception:  # noqa: BLE001 - one broken listener must not cost the others their results
        log.exception("dropping a job whose event callback failed")
        job.cancel()
