"""Prometheus metrics for the server, on a registry of its own (so two apps in one process, as
in tests and `bench/serve_load.py`, never clash). Scrape `GET /metrics`.

    domaintune_requests_total{endpoint,model,status}      requests answered, by HTTP status
    domaintune_request_errors_total{endpoint,type}        answers with status >= 400, by error type
    domaintune_request_latency_seconds{endpoint}          histogram, arrival to last byte
    domaintune_time_to_first_token_seconds{endpoint}      histogram, arrival to first token
    domaintune_generated_tokens_total{model}              tokens generated
    domaintune_generation_tokens_per_second               throughput of the last batch
    domaintune_queue_depth                                jobs waiting for the worker
    domaintune_batch_size                                 histogram, rows per decode call
    domaintune_requests_in_flight                         requests being handled
    domaintune_cache_hits_total                           answers served from the response cache
    domaintune_store_errors_total                         failed writes to the traffic store (retried)
    domaintune_drift{model,statistic}                     live drift of the last window (serve/drift.py)
    domaintune_drift_threshold{model,statistic}           its threshold, from the training data
    domaintune_drift_alarm{model,statistic}               1 while the drift is over its threshold
    domaintune_shadow_requests_total{model,outcome}       shadow copies: answered, skipped (busy), failed
    domaintune_shadow_disagreement{model}                 histogram of shadow vs production, 0 to 1
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """The server's metrics; the engine and the HTTP layer report into it.

    Example:
        >>> m = ServeMetrics()
        >>> m.observe_batch(4)
        >>> b"domaintune_batch_size_count 1.0" in m.render()[0]
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("domaintune_requests", "Requests answered", ["endpoint", "model", "status"], registry=r)
        self.errors = Counter("domaintune_request_errors", "Requests answered with an error", ["endpoint", "type"],
                              registry=r)
        self.latency = Histogram("domaintune_request_latency_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("domaintune_time_to_first_token_seconds", "Time to first token", ["endpoint"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("domaintune_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.tokens_per_s = Gauge("domaintune_generation_tokens_per_second", "Tokens/s of the last batch",
                                  registry=r)
        self.queue_depth = Gauge("domaintune_queue_depth", "Jobs waiting for the worker", registry=r)
        self.batch_size = Histogram("domaintune_batch_size", "Rows per decode call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.in_flight = Gauge("domaintune_requests_in_flight", "Requests being handled", registry=r)
        self.cache_hits = Counter("domaintune_cache_hits", "Answers served from the response cache", registry=r)
        self.request_log_errors = Counter("domaintune_request_log_errors",
                                          "Request-log lines that could not be written (the answers were sent)",
                                          registry=r)
        self.store_errors = Counter("domaintune_store_errors",
                                    "Failed writes to the traffic store (retried; the answers were sent)", registry=r)
        self.drift = Gauge("domaintune_drift", "Drift of the last window of prompts against the training data",
                           ["model", "statistic"], registry=r)
        self.drift_threshold = Gauge("domaintune_drift_threshold", "The drift statistic's threshold for that window",
                                     ["model", "statistic"], registry=r)
        self.shadow_requests = Counter("domaintune_shadow_requests", "Shadow copies of answered requests",
                                       ["model", "outcome"], registry=r)
        self.shadow_disagreement = Histogram("domaintune_shadow_disagreement", "Shadow vs production disagreement",
                                             ["model"], buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0), registry=r)
        self.drift_alarm = Gauge("domaintune_drift_alarm", "1 while the drift statistic is over its threshold",
                                 ["model", "statistic"], registry=r)

    # Engine side (called from the worker thread; prometheus_client is thread-safe).
    def observe_batch(self, rows: int) -> None:
        """Record one decode call of `rows` rows."""
        self.batch_size.observe(rows)

    def set_queue_depth(self, depth: int) -> None:
        """Record the number of waiting jobs."""
        self.queue_depth.set(depth)

    def add_tokens(self, model: str, count: int, seconds: float) -> None:
        """Record `count` tokens generated for `model` by a batch that took `seconds`."""
        self.tokens.labels(model=model).inc(count)
        if seconds > 0:
            self.tokens_per_s.set(count / seconds)

    # HTTP side.
    def observe_request(self, endpoint: str, model: str, status: int, seconds: float,
                        error_type: str | None = None) -> None:
        """Record one answered request (and its error type when status >= 400)."""
        self.requests.labels(endpoint=endpoint, model=model, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint=endpoint, type=error_type or "error").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
