"""Classic baselines on the same split: what a tuned model has to beat before anyone should care.

Fitted on the training records (the prompt text in, the final answer out) and scored on the
evaluation records exactly like the model:

* `majority`: always the most frequent training answer;
* `tfidf_lr` (closed answer sets): TF-IDF over word 1-2-grams and character 2-5-grams
  (scikit-learn), multinomial logistic regression; C is chosen on the validation records, never
  on the evaluation split (`data.classic`, the classifier a run's prior can be);
* `nearest`: the answer of the most similar training prompt (TF-IDF cosine), the retrieval
  baseline for free-text answers as for labels.

Closed sets are scored by accuracy and macro-F1 on the answer itself, free text by chrF.

    out = classic_baselines(train, test, val=val, closed=True)
    out["tfidf_lr"]["metrics"]["accuracy"], out["tfidf_lr"]["per_example"][:3]
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from domaintune.data.answers import final_answer, prompt_text



def classic_baselines(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]], *,
                      val: Sequence[Mapping[str, Any]] = (), closed: bool) -> dict[str, dict[str, Any]]:
    """Fit each baseline on `train`, pick its settings on `val`, score it on `test`.

    Returns:
        `{name: {"predictions", "per_example", "metrics", "seconds", "settings"}}`; per-example
        scores are 0/100 (closed sets) or sentence chrF (free text).
    """
    xs, ys = _pairs(train)
    test_x, test_y = _pairs(test)
    val_x, val_y = _pairs(val)
    if not xs or not test_x:
        return {}
    out = {"majority": _run(lambda: ([Counter(ys).most_common(1)[0][0]] * len(test_x), {}), test_y, closed),
           "nearest": _run(lambda: (_nearest(xs, ys, test_x), {}), test_y, closed)}
    if closed and len(set(ys)) >= 2:
        out["tfidf_lr"] = _run(lambda: _tfidf_lr(xs, ys, val_x, val_y, test_x), test_y, closed)
    return out


def _pairs(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    pairs = [(prompt_text(r), final_answer(r)) for r in records]
    kept = [(x, y) for x, y in pairs if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _run(fit_predict: Any, truth: list[str], closed: bool) -> dict[str, Any]:
    from domaintune.eval import metrics as m

    started = time.process_time()
    predictions, settings = fit_predict()
    seconds = time.process_time() - started
    if closed:
        labels = m.label_metrics(predictions, truth, labels=sorted(set(truth)))
        per_example, metrics = labels["per_example"], {"accuracy": labels["accuracy"], "macro_f1": labels["macro"]["f1"]}
    else:
        score = m.chrf(predictions, truth)
        per_example, metrics = score.per_example, {"chrf": score.value}
    return {"predictions": predictions, "per_example": per_example, "metrics": metrics,
            "cpu_seconds": round(seconds, 3), "settings": settings}


def _nearest(xs: list[str], ys: list[str], queries: list[str]) -> list[str]:
    from domaintune.data.classic import fit_vectorizers, transform

    vectorizers = fit_vectorizers(xs)
    similarity = transform(vectorizers, queries) @ transform(vectorizers, xs).T  # rows are L2-normalised: cosine
    return [ys[int(similarity[i].toarray().argmax())] for i in range(len(queries))]


def _tfidf_lr(xs: list[str], ys: list[str], val_x: list[str], val_y: list[str],
              test_x: list[str]) -> tuple[list[str], dict[str, Any]]:
    from domaintune.data.classic import fit_classifier

    clf = fit_classifier(xs, ys, val_x, val_y)
    return clf.predict(test_x), clf.settings


def against_model(model_scores: Sequence[float], baselines: Mapping[str, Mapping[str, Any]],
                  metric: str) -> dict[str, dict[str, Any]]:
    """Each baseline beside the model on `metric`: the difference (model - baseline) and a paired p-value.

    Args:
        model_scores: the model's per-example scores on `metric` (0/100 for labels, chrF otherwise).
        baselines: `classic_baselines` output.
        metric: "accuracy" (McNemar's test) or "chrf" (paired bootstrap).

    Returns:
        `{name: {"metric", "baseline", "model", "diff", "p_value"}}` (JSON-ready, no predictions).
    """
    from domaintune.eval import stats

    out = {}
    model = sum(model_scores) / len(model_scores) if model_scores else float("nan")
    for name, result in baselines.items():
        theirs = result["per_example"]
        if len(theirs) != len(model_scores) or metric not in result["metrics"]:
            continue
        if metric == "accuracy":
            p = stats.mcnemar([s > 0 for s in theirs], [s > 0 for s in model_scores]).p_value
        else:
            p = stats.paired_bootstrap(theirs, model_scores, n_resamples=2000).p_value
        base = result["metrics"][metric]
        out[name] = {"metric": metric, "baseline": base, "model": model, "diff": model - base, "p_value": p,
                     "cpu_seconds": result["cpu_seconds"], "settings": result["settings"]}
    return out
