"""The JSONL request log: one line per completion request, for `domaintune monitor` to read later.

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

Lines are appended and flushed one at a time under a lock, so a crash loses at most the line
being written, and readers can tail the file while the server runs.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from domaintune.errors import UserError


class RequestLog:
    """Appends request records to a JSONL file.

    Args:
        path: the file (its folder is created); appended to if it exists.

    Raises:
        UserError: the file cannot be opened for writing.

    Example:
        >>> log = RequestLog(tmp_path / "requests.jsonl")               # doctest: +SKIP
        >>> log.write({"model": "base", "output": ["hi"], "status": 200})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the server's life
        except OSError as err:
            raise UserError(f"cannot write the request log '{self.path}': {err.strerror}",
                            hint="pass a writable --request-log path") from None
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line (keys as in the module docstring)."""
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        with self._lock:
            self._file.close()


def now_iso(ago_s: float = 0.0) -> str:
    """The UTC time `ago_s` seconds before now in ISO 8601, as the log's `ts` field."""
    return (datetime.now(timezone.utc) - timedelta(seconds=ago_s)).isoformat()
