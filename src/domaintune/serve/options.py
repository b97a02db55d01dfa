"""The server's settings as one flat, typed object (`api.serve` fills it from the recipe and flags).

    ServeOptions(max_batch_size=8, batch_window_ms=15, api_key="sk-local", request_log="requests.jsonl")
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from domaintune.errors import UserError

API_KEY_ENV = "DOMAINTUNE_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches, limits and records requests.

    Attributes:
        max_batch_size: most rows (choices) decoded together; 1 turns batching off.
        batch_window_ms: how long the oldest waiting request waits for others to join its batch.
        max_queue: most requests waiting for the model; one more is answered 429.
        retry_after_s: the Retry-After a 429 carries.
        request_timeout_s: deadline of each request, from arrival to its last token (504 after).
        max_tokens_limit: the largest `max_tokens` a request may ask for.
        default_max_tokens: `max_tokens` when a request gives none (cut to what fits the context).
        max_n: most choices per request (`n`, times the number of prompts for /v1/completions).
        max_body_bytes: largest request body accepted (413 beyond).
        cache_size: entries of the exact-match cache for greedy requests (0: off).
        request_log: JSONL file each completion request is appended to (None: no log).
        request_log_raw: log prompts and outputs unmasked (by default they are PII-masked).
        store: the traffic store (`data.store`: a SQLite path or an SQLAlchemy URL) every answered
            request is recorded in, PII-masked, and `/v1/feedback` writes to (None: none).
        store_retention_days: requests older than this are pruned from the store (None: kept).
        shadow_rate: the share of answered chat requests to a shadowed name copied to its
            candidate (`serve/shadow.py`).
        shadow_threshold: the disagreement (0 to 1) over which a shadow case enters review.
        api_key: the key clients must send as "Authorization: Bearer KEY" (None: open).
        closed_set: "auto": requests to an adapter whose run recorded a closed answer set decode
            inside it (unless they give their own `guided_choice`); "off": only `guided_choice`.

    Example:
        >>> ServeOptions(max_batch_size=1).max_batch_size
        1
    """

    max_batch_size: int = 8
    batch_window_ms: float = 15.0
    max_queue: int = 64
    retry_after_s: int = 1
    request_timeout_s: float = 120.0
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    cache_size: int = 0
    request_log: str | None = None
    request_log_raw: bool = False
    store: str | None = None
    store_retention_days: float | None = 30.0
    shadow_rate: float = 0.25
    shadow_threshold: float = 0.5
    api_key: str | None = None
    closed_set: str = "off"

    def __post_init__(self) -> None:
        checks = {"max_batch_size": self.max_batch_size >= 1, "batch_window_ms": self.batch_window_ms >= 0,
                  "max_queue": self.max_queue >= 1, "retry_after_s": self.retry_after_s >= 0,
                  "request_timeout_s": self.request_timeout_s > 0, "max_tokens_limit": self.max_tokens_limit >= 1,
                  "default_max_tokens": 1 <= self.default_max_tokens <= self.max_tokens_limit,
                  "max_n": self.max_n >= 1, "max_body_bytes": self.max_body_bytes >= 1024,
                  "cache_size": self.cache_size >= 0,
                  "store_retention_days": self.store_retention_days is None or self.store_retention_days > 0,
                  "shadow_rate": 0 <= self.shadow_rate <= 1, "shadow_threshold": 0 <= self.shadow_threshold <= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"serve settings out of range: {', '.join(bad)}",
                            hint="sizes and limits are positive; default_max_tokens <= max_tokens_limit")
        if self.closed_set not in ("auto", "off"):
            raise UserError(f"closed_set must be 'auto' or 'off', got {self.closed_set!r}", hint="--closed-set auto")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("the API key is empty", hint=f"pass --api-key KEY or set {API_KEY_ENV}, or neither")


def resolve_api_key(flag: str | None) -> str | None:
    """The API key: the `--api-key` flag, else `$DOMAINTUNE_API_KEY`, else None (no auth).

    Example:
        >>> resolve_api_key("sk-1")
        'sk-1'
    """
    return flag if flag is not None else (os.environ.get(API_KEY_ENV) or None)
