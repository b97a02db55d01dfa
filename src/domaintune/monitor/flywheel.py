"""The flywheel's first step: what users said of production's answers, as new training records.

    records, rejects = feedback_records(store.requests(), store.feedback(), exclude=train + val + test)

Every feedback row ends in exactly one of the two lists:

* a correction (`"correction"` given): the conversation the user had, answered with the correction,
  `metadata.origin = "feedback-correction"`;
* an approval (no correction, and a rating of at least `min_rating` stars, or 1 on the -1/1 thumbs
  scale): the conversation with production's own answer, `origin = "feedback-approved"`. A rating
  of 1 is a thumbs-up or the worst of five stars: the feedback is read as stars when any rating in
  it is 2 or more, else as thumbs;
* rejected, with a reason: a rating below that without a correction (nothing to learn the right
  answer from), a request the store no longer holds, a question already in the excluded data
  (training, validation or test: a test question must never become training data), or a later
  feedback on the same question (the newest one wins).

The store masked prompts, answers and corrections when it wrote them, so nothing here is unmasked.
Each record keeps its origin (`request_id`, `feedback_id`, `model`, `rating`, `ts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domaintune.data.kb import norm_text
from domaintune.models.context import query_text

MIN_RATING = 4


def feedback_records(requests: Sequence[Mapping[str, Any]], feedback: Sequence[Mapping[str, Any]], *,
                     exclude: Sequence[Mapping[str, Any]] = (), min_rating: int = MIN_RATING
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training records from feedback, and the rejected feedback with its reason (see the module docstring)."""
    by_id = {r["id"]: r for r in requests}
    stars = any((f.get("rating") or 0) >= 2 for f in feedback)
    excluded = {norm_text(query_text(r.get("messages") or [])) for r in exclude}
    kept: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    for f in sorted(feedback, key=lambda f: (str(f.get("ts")), f["id"])):
        request = by_id.get(f["request_id"])
        origin = {"feedback_id": f["id"], "request_id": f["request_id"], "rating": f.get("rating"),
                  "ts": _iso(f.get("ts"))}
        if request is None:
            rejects.append({**origin, "reason": "the request is no longer in the store (retention)"})
            continue
        messages = request.get("prompt")
        if not (isinstance(messages, list) and messages and isinstance(messages[0], Mapping)):
            rejects.append({**origin, "reason": "not a chat request (/v1/completions): no conversation to train on"})
            continue
        answer, kind = _answer(f, request, min_rating if stars else 1)
        if answer is None:
            rejects.append({**origin, "reason": kind})
            continue
        key = norm_text(query_text(messages))
        if key in excluded:
            rejects.append({**origin, "reason": "the question is already in the excluded data (train/val/test)"})
            continue
        if key in kept:
            old = kept[key]["metadata"]
            rejects.append({**{k: old[k] for k in ("feedback_id", "request_id", "rating", "ts")},
                            "reason": "a later feedback on the same question replaces it"})
        kept[key] = {"messages": [dict(m) for m in messages] + [{"role": "assistant", "content": answer}],
                     "metadata": {"origin": kind, "model": request.get("model"), **origin}}
    return list(kept.values()), rejects


def _answer(f: Mapping[str, Any], request: Mapping[str, Any], least: int) -> tuple[str | None, str]:
    """The answer to train on and the record's origin, or None and the reason (`least`: the lowest
    rating that approves: `min_rating` stars, or 1 for thumbs)."""
    if f.get("correction"):
        return str(f["correction"]), "feedback-correction"
    rating = f.get("rating")
    if rating is not None and rating >= least and request.get("output"):
        return str(request["output"][0]), "feedback-approved"
    return None, f"rating {rating} without a correction: nothing says what the right answer is"


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value is not None else None)
