"""The traffic store: what production saw (requests and their answers) and what users said of it.

A real database through SQLAlchemy: a SQLite file by default (embedded, nothing to start; WAL
journal so readers never block the writer), any SQLAlchemy URL for several replicas
(`postgresql+psycopg://user@host/db`). Two tables, created when missing:

    requests   id (the response id the client got), ts, endpoint, model, prompt (JSON), output
               (JSON list, one per choice), finish_reasons, confidences, prompt_tokens,
               completion_tokens, latency_s, status, error, cached, stream
    feedback   id, request_id -> requests.id, ts, rating (-1, 1, or 1-5), correction, comment
    shadow     id, request_id -> requests.id, ts, model, candidate, output, confidence,
               disagreement (0 same .. 1 different), review ("pending" over the threshold, else "none")

Prompts, outputs, errors, corrections and comments are PII-masked before they are stored, as
`prepare` masks training data (`data.pii`); nothing is stored unmasked. The server hands records to
`write`, which only queues them: one writer thread inserts them in batches, retries while the
database is unreachable (counted through `on_error`, the queue bounded at `max_queue`, the oldest
records dropped beyond it and counted) and never delays or fails a request. `retention_days`
prunes older requests (and their feedback) once an hour.

    store = Store("traffic.db")                 # or Store("postgresql+psycopg://...")
    store.write(record)                         # the request log's record (serve/requestlog.py)
    store.add_feedback("chatcmpl-…", rating=1, correction="cardiology")
    rows = store.requests(since=datetime(...))
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from domaintune.data.pii import PiiMasker
from domaintune.errors import UserError

log = logging.getLogger(__name__)

MASKED = ("prompt", "output", "error")
JSON_FIELDS = ("prompt", "output", "finish_reasons", "confidences")
BATCH, MAX_QUEUE, PRUNE_EVERY_S, RETRY_S = 256, 10_000, 3600.0, 1.0


class UnknownRequest(LookupError):
    """Feedback names a response id the store does not hold."""


def store_url(target: str | Path) -> str:
    """An SQLAlchemy URL for `target`: a URL as given, a plain path as a SQLite file."""
    text = str(target)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def _tables() -> tuple[Any, Any, Any, Any]:
    from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, MetaData, String, Table,
                            Text)

    meta = MetaData()
    requests = Table("requests", meta,
                     Column("id", String(64), primary_key=True), Column("ts", DateTime(timezone=True), index=True),
                     Column("endpoint", String(32)), Column("model", String(128), index=True),
                     Column("prompt", JSON), Column("output", JSON), Column("finish_reasons", JSON),
                     Column("confidences", JSON), Column("prompt_tokens", Integer),
                     Column("completion_tokens", Integer), Column("latency_s", Float), Column("status", Integer),
                     Column("error", Text), Column("cached", Boolean), Column("stream", Boolean))
    feedback = Table("feedback", meta,
                     Column("id", Integer, primary_key=True, autoincrement=True),
                     Column("request_id", String(64), ForeignKey("requests.id", ondelete="CASCADE"), index=True),
                     Column("ts", DateTime(timezone=True), index=True), Column("rating", Integer),
                     Column("correction", Text), Column("comment", Text))
    shadow = Table("shadow", meta,
                   Column("id", Integer, primary_key=True, autoincrement=True),
                   Column("request_id", String(64), ForeignKey("requests.id", ondelete="CASCADE"), index=True),
                   Column("ts", DateTime(timezone=True), index=True), Column("model", String(128)),
                   Column("candidate", String(256)), Column("output", Text), Column("confidence", Float),
                   Column("disagreement", Float), Column("review", String(16), index=True))
    return meta, requests, feedback, shadow


class Store:
    """The traffic store behind one SQLAlchemy URL (see the module docstring).

    Args:
        target: an SQLAlchemy URL, or a path for a SQLite file (its folder is created).
        retention_days: requests older than this are pruned (None: kept).
        on_error: called with each failed write's exception (the server counts them).
        max_queue: records waiting for the writer; beyond it the oldest are dropped (and counted).

    Raises:
        UserError: the database cannot be reached or its tables cannot be created.
    """

    def __init__(self, target: str | Path, *, retention_days: float | None = None,
                 on_error: Callable[[Exception], None] | None = None, max_queue: int = MAX_QUEUE) -> None:
        from sqlalchemy import create_engine, event
        from sqlalchemy.exc import SQLAlchemyError

        self.url = store_url(target)
        self.retention_days = retention_days
        self.dropped = 0
        self._mask = PiiMasker()
        self._on_error = on_error or (lambda _err: None)
        self._meta, self._requests, self._feedback, self._shadow = _tables()
        self._queue: queue.Queue[tuple[Any, dict[str, Any]] | None] = queue.Queue(maxsize=max_queue)
        self._idle = threading.Condition()
        self._pending = 0
        shown = self.url.split("@")[-1]  # never echo a password
        try:
            if self.url.startswith("sqlite:///"):
                Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self._meta.create_all(self.engine)
        except (SQLAlchemyError, OSError, ImportError) as err:
            raise UserError(f"cannot open the store {shown}: {str(err).splitlines()[0][:200]}",
                            hint="pass a writable SQLite path or a reachable SQLAlchemy URL to --store") from None
        self._writer = threading.Thread(target=self._run, name="domaintune-store", daemon=True)
        self._writer.start()

    # -- writing (the server's side) ---------------------------------------------------------

    def write(self, record: Mapping[str, Any]) -> bool:
        """Queue one request record (keys as serve/requestlog.py's); False when it had no id (a
        request refused before it got one is not stored) or when the store is closed."""
        if not record.get("id") or not self._writer.is_alive():
            return False
        row = {k: record.get(k) for k in self._requests.columns.keys()}
        row["ts"] = _as_time(record.get("ts"))
        for key in MASKED:
            if row[key] is not None:
                row[key] = self._mask.mask_values(row[key])[0]
        return self._enqueue(self._requests, row)

    def write_shadow(self, request_id: str, model: str, candidate: str, output: str, confidence: float | None,
                     disagreement: float, pending: bool) -> bool:
        """Queue a shadow candidate's answer to a stored request (masked); `pending`: it goes to review."""
        if not self._writer.is_alive():
            return False
        row = {"request_id": request_id, "ts": datetime.now(timezone.utc), "model": model, "candidate": candidate,
               "output": self._mask(output)[0], "confidence": confidence, "disagreement": float(disagreement),
               "review": "pending" if pending else "none"}
        return self._enqueue(self._shadow, row)

    def _enqueue(self, table: Any, row: dict[str, Any]) -> bool:
        with self._idle:
            self._pending += 1
        while True:
            try:
                self._queue.put_nowait((table, row))
                return True
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                    self._settled(1)
                except queue.Empty:
                    pass

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout`), stop the writer, release the connections."""
        self.flush(timeout)
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout)
        self.engine.dispose()

    def _settled(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            if self._pending <= 0:
                self._idle.notify_all()

    def _run(self) -> None:
        last_prune = 0.0
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            for table, rows in _runs(batch):  # consecutive rows of one table, in queue order
                self._insert(table, rows)
            if stop:
                return
            if self.retention_days is not None and time.monotonic() - last_prune > PRUNE_EVERY_S:
                last_prune = time.monotonic()
                self._try(self.prune)

    def _insert(self, table: Any, batch: list[dict[str, Any]]) -> None:
        """Insert `batch`, retrying while the database is unreachable; a row the database refuses
        (an id already stored, a shadow answer whose request was dropped) is skipped alone."""
        from sqlalchemy.exc import IntegrityError

        while True:
            try:
                with self.engine.begin() as conn:
                    conn.execute(table.insert(), batch)
                break
            except IntegrityError:  # one bad row spoils a batch insert: fall back to rows
                for row in batch:
                    self._try(lambda r=row: self._insert_one(table, r))
                break
            except Exception as err:  # noqa: BLE001 - an outage: count it, keep the rows, retry
                self._on_error(err)
                log.warning("store write failed (%s); retrying in %.0f s", type(err).__name__, RETRY_S)
                time.sleep(RETRY_S)
        self._settled(len(batch))

    def _insert_one(self, table: Any, row: dict[str, Any]) -> None:
        from sqlalchemy.exc import IntegrityError

        try:
            with self.engine.begin() as conn:
                conn.execute(table.insert(), [row])
        except IntegrityError:
            pass

    def _try(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - never kill the writer
            self._on_error(err)

    # -- feedback, reading, retention ----------------------------------------------------------

    def add_feedback(self, request_id: str, rating: int, correction: str | None = None,
                     comment: str | None = None) -> int:
        """Store feedback on a stored response (masked); returns its id.

        Raises:
            UnknownRequest: no stored request has that id.
        """
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        self.flush(timeout=5.0)  # the request may still be in the queue
        row = {"request_id": request_id, "ts": datetime.now(timezone.utc), "rating": int(rating),
               "correction": None if correction is None else self._mask(correction)[0],
               "comment": None if comment is None else self._mask(comment)[0]}
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(self._requests.c.id).where(self._requests.c.id == request_id)).first() is None:
                    raise UnknownRequest(request_id)
                return int(conn.execute(self._feedback.insert().values(**row)).inserted_primary_key[0])
        except IntegrityError:  # pruned by retention between the lookup and the insert
            raise UnknownRequest(request_id) from None

    def requests(self, since: datetime | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Stored requests, oldest first (optionally from `since`, for one served `model`)."""
        from sqlalchemy import select

        query = select(self._requests).order_by(self._requests.c.ts, self._requests.c.id)
        if since is not None:
            query = query.where(self._requests.c.ts >= since)
        if model is not None:
            query = query.where(self._requests.c.model == model)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def feedback(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Stored feedback, oldest first."""
        from sqlalchemy import select

        query = select(self._feedback).order_by(self._feedback.c.id)
        if since is not None:
            query = query.where(self._feedback.c.ts >= since)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def shadows(self, since: datetime | None = None, review: str | None = None) -> list[dict[str, Any]]:
        """Stored shadow answers, oldest first (`review="pending"`: the review queue)."""
        from sqlalchemy import select

        query = select(self._shadow).order_by(self._shadow.c.id)
        if since is not None:
            query = query.where(self._shadow.c.ts >= since)
        if review is not None:
            query = query.where(self._shadow.c.review == review)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def prune(self, now: datetime | None = None) -> int:
        """Delete requests (and their feedback) older than `retention_days`; returns how many."""
        from sqlalchemy import delete, select

        if self.retention_days is None:
            return 0
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=self.retention_days)
        old = select(self._requests.c.id).where(self._requests.c.ts < cutoff)
        with self.engine.begin() as conn:
            conn.execute(delete(self._feedback).where(self._feedback.c.request_id.in_(old)))
            conn.execute(delete(self._shadow).where(self._shadow.c.request_id.in_(old)))
            return int(conn.execute(delete(self._requests).where(self._requests.c.ts < cutoff)).rowcount or 0)


def _runs(batch: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, list[dict[str, Any]]]]:
    out: list[tuple[Any, list[dict[str, Any]]]] = []
    for table, row in batch:
        if out and out[-1][0] is table:
            out[-1][1].append(row)
        else:
            out.append((table, [row]))
    return out


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        return _as_time(datetime.fromisoformat(value))
    return datetime.now(timezone.utc)


def _row(mapping: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(mapping)
    if isinstance(row.get("ts"), datetime) and row["ts"].tzinfo is None:  # SQLite drops the zone: it was UTC
        row["ts"] = row["ts"].replace(tzinfo=timezone.utc)
    for key in JSON_FIELDS:
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return row
