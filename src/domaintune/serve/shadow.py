"""Shadow mode: a candidate answers copies of production's requests, unseen, after production has.

`serve --adapter prod=RUN --shadow prod=CANDIDATE --shadow-rate 0.25 --store traffic.db`: the
candidate is loaded as a hidden route (`prod:shadow`, not listed, not callable). When a chat
request to `prod` has been answered (status 200, the answer already sent), a share `rate` of them
(chosen by the response id's hash, so the same ids are always chosen) is planned again for the
candidate (its own knowledge base, answer set and prior, as if a client had asked it) and queued on
the engine only while no production request waits, so a shadow never delays production; one
skipped for a busy queue is counted (`domaintune_shadow_requests_total{outcome="skipped"}`).

The candidate's answer is stored beside production's (`data.store`, table `shadow`) with their
disagreement: inside a closed answer set 1 when the labels differ, else 0; for free text
1 - chrF/100 (sacrebleu's sentence chrF of the candidate against production). Answers over
`threshold` (default 0.5) enter the review queue (`review = "pending"`); `domaintune monitor
shadow` reports agreement over time, the largest disagreements and which model users' corrections
side with.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from domaintune.serve.jobs import Failed, Finished, Job, QueueFull, ShuttingDown, Tokens

log = logging.getLogger(__name__)

THRESHOLD = 0.5


def chosen(rid: str, rate: float) -> bool:
    """Whether response `rid` is copied to the shadow (a stable share `rate` of all ids)."""
    return int(hashlib.sha256(rid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < rate


def disagreement(production: str, candidate: str, closed: bool) -> float:
    """0 (the same answer) to 1: label inequality inside a closed set, else 1 - sentence chrF / 100."""
    a, b = production.strip(), candidate.strip()
    if closed or not a or not b:
        return 0.0 if a == b else 1.0
    from sacrebleu.metrics import CHRF

    return round(1.0 - CHRF().sentence_score(b, [a]).score / 100.0, 4)


class Shadows:
    """Copies answered requests to their shadow candidates (see the module docstring).

    Args:
        service: the app's `Service` (its served models, engine, prepare thread, store, metrics).
        rate: the share of production's answered chat requests copied, 0 to 1.
        threshold: the disagreement over which a case enters the review queue.
    """

    def __init__(self, service: Any, rate: float, threshold: float = THRESHOLD) -> None:
        if not 0 <= rate <= 1 or not 0 <= threshold <= 1:
            raise ValueError("the shadow rate and threshold are shares, 0 to 1")
        self.service, self.rate, self.threshold = service, rate, threshold
        self._finish = ThreadPoolExecutor(max_workers=1, thread_name_prefix="domaintune-shadow")

    def after(self, plan: Any, run: Any) -> None:
        """Called once production's answer to `plan` was sent: maybe copy it to the shadow."""
        served = self.service.served
        shadow = served.shadows.get(plan.model)
        if shadow is None or plan.request is None or not chosen(plan.rid, self.rate):
            return
        counter = self.service.metrics.shadow_requests
        if self.service.engine.queue_depth > 0:  # production is waiting: never take its turn
            counter.labels(model=plan.model, outcome="skipped").inc()
            return
        production = run.texts[0]
        self.service.prepare.submit(self._submit, plan, shadow, production)

    def _submit(self, plan: Any, shadow: str, production: str) -> None:
        from domaintune.serve.handlers import plan_chat

        counter = self.service.metrics.shadow_requests
        try:
            request = plan.request.model_copy(update={"model": shadow, "n": 1, "stream": False})
            copy = plan_chat(request, self.service.served, self.service.options, shadow=True)
        except Exception as err:  # noqa: BLE001 - the candidate refusing a request is data, not a crash
            log.warning("shadow %s could not plan %s: %s", shadow, plan.rid, err)
            counter.labels(model=plan.model, outcome="failed").inc()
            return
        stream = self.service.served.codec.stream(copy.stops)
        closed = copy.params[0].choices is not None

        def emit(event: Any) -> None:  # the engine's thread: keep it short
            if isinstance(event, Tokens):
                for _, token in event.pairs:
                    stream.push(token)
            elif isinstance(event, Finished):
                stream.flush()
                self._finish.submit(self._store, plan, shadow, production, stream.text, event.confidence, closed)
            elif isinstance(event, Failed):
                counter.labels(model=plan.model, outcome="failed").inc()

        job = Job(shadow, copy.prompts[:1], copy.params[:1], emit=emit,
                  deadline=time.monotonic() + self.service.options.request_timeout_s)
        try:
            if self.service.engine.queue_depth > 0:
                counter.labels(model=plan.model, outcome="skipped").inc()
                return
            self.service.engine.submit(job)
        except (QueueFull, ShuttingDown):
            counter.labels(model=plan.model, outcome="skipped").inc()

    def _store(self, plan: Any, shadow: str, production: str, text: str, confidence: float | None,
               closed: bool) -> None:
        gap = disagreement(production, text, closed)
        metrics = self.service.metrics
        metrics.shadow_requests.labels(model=plan.model, outcome="answered").inc()
        metrics.shadow_disagreement.labels(model=plan.model).observe(gap)
        if self.service.store is not None:
            self.service.store.write_shadow(plan.rid, plan.model, shadow, text, confidence, gap, gap > self.threshold)

    def close(self) -> None:
        self._finish.shutdown(wait=True)
