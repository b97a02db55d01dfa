"""How retrieval served an evaluation: recall@k, the model's score on hits and misses, and the
retrieval-only baseline (the answer of the top entry) beside the model.

An evaluation record's `metadata.retrieved` holds the ids of the entries its prompt showed
(`models.context.augment_records`). A record is a hit when its reference answer is the answer of
one of them (entries from training pairs carry answers; document and table entries do not count).

    report = retrieval_report(records, kb, model_scores, metric="accuracy")
    report["recall_at_k"], report["by_hit"]["hit"]["score"], report["top1"]["score"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domaintune.data.answers import final_answer


def retrieval_report(records: Sequence[Mapping[str, Any]], kb: Any, model_scores: Sequence[float], *,
                     metric: str, k: int) -> dict[str, Any]:
    """Recall@k, the model's mean score on hits vs misses, and the top-1 entry's answer as a baseline.

    Args:
        records: the evaluated (augmented) records, in prediction order.
        kb: the knowledge base they were augmented from.
        model_scores: the model's per-example score on `metric` (0/100 for answers in a closed set).
        metric: "accuracy" (exact answers) or "chrf".
        k: entries retrieved per prompt.
    """
    from domaintune.eval import metrics as m
    from domaintune.eval import stats

    refs = [final_answer(r) or "" for r in records]
    retrieved = [[kb.entries[i] for i in (r.get("metadata") or {}).get("retrieved", [])] for r in records]
    hits = [any(e.answer is not None and e.answer.strip() == ref.strip() for e in entries)
            for entries, ref in zip(retrieved, refs)]
    top1 = [entries[0].answer or "" if entries else "" for entries in retrieved]
    if metric == "accuracy":
        top1_scores = [100.0 if a.strip() == ref.strip() else 0.0 for a, ref in zip(top1, refs)]
        p = stats.mcnemar([s > 0 for s in top1_scores], [s > 0 for s in model_scores]).p_value
    else:
        top1_scores = m.chrf(top1, refs).per_example
        p = stats.paired_bootstrap(top1_scores, list(model_scores), n_resamples=2000).p_value
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {"k": k, "n": len(records), "entries": len(kb), "kb_sha256": kb.sha256,
            "recall_at_k": 100.0 * sum(hits) / len(hits) if hits else None,
            "by_hit": {"hit": {"n": sum(hits), "score": mean([s for s, h in zip(model_scores, hits) if h])},
                       "miss": {"n": len(hits) - sum(hits), "score": mean([s for s, h in zip(model_scores, hits)
                                                                           if not h])}},
            "top1": {"metric": metric, "score": mean(top1_scores), "model": mean(list(model_scores)),
                     "p_value": p}}
