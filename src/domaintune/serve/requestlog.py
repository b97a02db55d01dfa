"""The JSONL request log: one line per completion request, for the operator to read later.

Each line is a JSON object with these keys (stable; add keys, never rename them):

    ts                 ISO 8601 UTC time the request arrived, e.g. "2025-01-31T12:00:00.123456+00:00"
    id                 the response id ("chatcmpl-…", "cmpl-…"), null when the request was refused early
    endpoint           "chat.completions" or "completions"
    model              the served name asked for (null if the body had none)
    prompt             chat: the messages [{"role", "content"}]; completions: the prompt text(s)
    output             the generated texts, one per choice ([] on error)
    finish_reasons     one per choice: "stop", "length" (or "cancelled", "deadline")
    prompt_tokens      prompt length in tokens (0 when not tokenized)
    completion_tokens  tokens generated, over all choices
    latency_s          seconds from arrival to the last byte
    status             the HTTP status (200, 400, 429, ...; a stream that failed midway logs 500)
    error              the error message, or null
    cached             true when the answer came from the response cache
    stream             whether the client asked for streaming
    confidences        one per choice: the answer's probability inside a closed set, else null

Lines are appended and flushed one at a time under a lock, so a crash loses at most the line
being written, and readers can tail the file while the server runs.

What it keeps: `prompt`, `output` and `error` are PII-masked by default, as `prepare` masks
training data (`<EMAIL>`, `<PHONE>`, ...); `raw=True` (`--request-log-raw`) keeps them verbatim.
The file is created readable by its owner only (0600). At `max_bytes` it is rotated like
logging's RotatingFileHandler (`requests.jsonl` -> `requests.jsonl.1` -> ... up to `backups`
files). A failed write (a full disk) is counted through `on_error` and never fails the request.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from domaintune.data.pii import PiiMasker
from domaintune.errors import UserError

MASKED_FIELDS = ("prompt", "output", "error")
MAX_BYTES = 64 * 2**20
BACKUPS = 3


class RequestLog:
    """Appends request records to a JSONL file (masked, owner-only, rotated: see the module docstring).

    Args:
        path: the file (its folder is created); appended to if it exists.
        raw: keep prompts and outputs unmasked.
        max_bytes: the size at which the file is rotated.
        backups: rotated files kept beside it.
        on_error: called with the OSError of a failed write (the server counts them).

    Raises:
        UserError: the file cannot be opened for writing.

    Example:
        >>> log = RequestLog(tmp_path / "requests.jsonl")               # doctest: +SKIP
        >>> log.write({"model": "base", "output": ["hi"], "status": 200})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, raw: bool = False, max_bytes: int = MAX_BYTES, backups: int = BACKUPS,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self._mask = None if raw else PiiMasker()
        self._on_error = on_error or (lambda _err: None)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._open()
        except OSError as err:
            raise UserError(f"cannot write the request log '{self.path}': {err.strerror}",
                            hint="pass a writable --request-log path") from None

    def _open(self) -> Any:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # an older log may have been created world-readable
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record as a line (keys as in the module docstring); False when the write failed."""
        if self._mask is not None:
            record = {**record, **{k: self._mask.mask_values(record[k])[0] for k in MASKED_FIELDS if k in record}}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._file.closed:
                return False
            try:
                if self._file.tell() and self._file.tell() + len(line.encode("utf-8")) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._file.flush()
            except OSError as err:
                self._on_error(err)
                return False
        return True

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self._open()

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        with self._lock:
            self._file.close()


def now_iso(ago_s: float = 0.0) -> str:
    """The UTC time `ago_s` seconds before now in ISO 8601, as the log's `ts` field."""
    return (datetime.now(timezone.utc) - timedelta(seconds=ago_s)).isoformat()
