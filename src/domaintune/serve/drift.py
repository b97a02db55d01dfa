"""Live drift gauges: the last `window` prompts to each watched model against its training data.

`serve --drift-reference NAME=prepared/train.jsonl` (repeatable) gives a served name its reference;
every answered chat request to it adds its last user message (and, inside a closed answer set, its
predicted label and confidence) to a rolling window, and every `every` requests the window's
statistics are recomputed off the request path (`data.drift.DriftMonitor`, thresholds from the
reference itself) into three Prometheus gauges:

    domaintune_drift{model,statistic}             the window's value (unigram_kl, length_psi, label_psi)
    domaintune_drift_threshold{model,statistic}   the reference's 0.99 quantile for that window size
    domaintune_drift_alarm{model,statistic}       1 while the value is over its threshold

`domaintune/monitor/prometheus_alerts.yml` alerts on the last; `grafana_dashboard.json` plots all three.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from domaintune.data.answers import closed_answer_set, final_answer
from domaintune.data.drift import DriftMonitor
from domaintune.models.context import query_text, question_text

log = logging.getLogger(__name__)

WINDOW, EVERY = 200, 50


class LiveDrift:
    """Rolling windows per watched model, and the gauges they set (see the module docstring).

    Args:
        references: served name -> its training records (prepared chat records).
        metrics: the server's `ServeMetrics` (its drift gauges are set here).
        window: prompts per window; every: requests between recomputations.
    """

    def __init__(self, references: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Any,
                 window: int = WINDOW, every: int = EVERY) -> None:
        self.metrics, self.window, self.every = metrics, window, every
        self.monitors: dict[str, DriftMonitor] = {}
        for name, records in references.items():
            labelled = closed_answer_set(records) is not None
            self.monitors[name] = DriftMonitor([question_text(r) for r in records],
                                               [(final_answer(r) or "").strip() for r in records] if labelled else None)
        self._rows: dict[str, deque] = {name: deque(maxlen=window) for name in self.monitors}
        self._seen = dict.fromkeys(self.monitors, 0)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="domaintune-drift")

    def observe(self, model: str, messages: Any, output: str | None, confidence: float | None) -> None:
        """Add one answered chat request; recompute that model's gauges every `every` requests."""
        if model not in self.monitors or not isinstance(messages, list):
            return
        with self._lock:
            self._rows[model].append((query_text(messages), (output or "").strip(), confidence))
            self._seen[model] += 1
            due = self._seen[model] % self.every == 0 and len(self._rows[model]) >= min(self.window, self.every)
            rows = list(self._rows[model]) if due else None
        if rows is not None:
            self._pool.submit(self._update, model, rows)

    def _update(self, model: str, rows: list[tuple[str, str, float | None]]) -> None:
        try:
            monitor = self.monitors[model]
            stats = monitor.check([r[0] for r in rows], [r[1] for r in rows] if monitor.labels else None,
                                  [r[2] for r in rows])
            for name, stat in stats.items():
                self.metrics.drift.labels(model=model, statistic=name).set(stat.value)
                self.metrics.drift_threshold.labels(model=model, statistic=name).set(stat.threshold)
                self.metrics.drift_alarm.labels(model=model, statistic=name).set(1.0 if stat.alarm else 0.0)
        except Exception:  # noqa: BLE001 - a gauge must never take the server down
            log.exception("drift update failed for %s", model)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
