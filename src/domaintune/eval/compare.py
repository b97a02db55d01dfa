"""`domaintune compare`: two evaluations of the same examples, and whether the difference is real.

    result = compare_results(read_eval("eval/base"), read_eval("eval/tuned"), names=("base", "tuned"))
    print(result["tests"]["accuracy"]["verdict"])
    # tuned better on accuracy: +41.2 points, 95% CI [34.6, 47.8], p < 0.001

The two sides must have scored the same examples in the same order (checked by the prompts and
references, so a shuffled or different test file is refused rather than silently mis-paired).
Each metric with per-example scores is tested with `stats.compare_metric`: McNemar for right/wrong
metrics, a paired t-test otherwise, and a paired bootstrap interval for every one. Per-example
NLL is left out of the default tests (its verdict would read in "points" of nats); perplexity
still shows in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domaintune.errors import UserError
from domaintune.eval.evaluate import EvalResult
from domaintune.eval.stats import compare_metric

BINARY = ("exact_match", "accuracy")  # per-example scores of 0 or 100
NOT_TESTED = ("nll",)  # see the module docstring
MAX_EXAMPLES = 30


def compare_results(a: EvalResult, b: EvalResult, names: tuple[str, str] = ("A", "B"), *,
                    metrics: Sequence[str] | None = None, n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired tests of every shared per-example metric of two evaluations.

    Args:
        a, b: evaluations of the same examples (`evaluate` or `read_eval`).
        names: display names for the verdicts.
        metrics: the metrics to test (default: every metric both sides scored per example).
        n_resamples, seed: paired bootstrap settings.

    Returns:
        A JSON-ready dict: `a`/`b` (name and corpus metrics), `tests` ({metric: compare_metric
        output}), `examples` (up to 30 examples the two sides disagree on), `n`.

    Raises:
        UserError: the two evaluations are not of the same examples.
    """
    check_paired(a, b)
    b_scored = b.predictions[0].get("scores", {})
    shared = metrics or [k for k in a.predictions[0].get("scores", {}) if k in b_scored and k not in NOT_TESTED]
    tests = {}
    for metric in shared:
        pair = _scores(a, b, metric)
        if pair is None:
            continue
        out = compare_metric(*pair, binary=metric in BINARY, metric=metric, names=names,
                             n_resamples=n_resamples, seed=seed)
        tests[metric] = {**out, "a": a.report["metrics"].get(metric), "b": b.report["metrics"].get(metric)}
    return {"a": {"name": names[0], "metrics": a.report["metrics"], "model": a.report.get("model")},
            "b": {"name": names[1], "metrics": b.report["metrics"], "model": b.report.get("model")},
            "n": len(a.predictions), "tests": tests, "examples": _disagreements(a, b)}


def check_paired(a: EvalResult, b: EvalResult) -> None:
    """Raise a UserError unless both evaluations scored the same examples in the same order."""
    if len(a.predictions) != len(b.predictions) or not a.predictions:
        raise UserError(f"the evaluations scored different numbers of examples ({len(a.predictions)} vs "
                        f"{len(b.predictions)})", hint="evaluate both models on the same --data file")
    for i, (x, y) in enumerate(zip(a.predictions, b.predictions)):
        if x.get("prompt") != y.get("prompt") or x.get("reference") != y.get("reference"):
            raise UserError(f"example {i + 1} differs between the two evaluations",
                            hint="evaluate both models on the same --data file, in the same order")


def _scores(a: EvalResult, b: EvalResult, metric: str) -> tuple[list[float], list[float]] | None:
    """Per-example scores of both sides, keeping only examples both scored (None: too few)."""
    pairs = [(x["scores"].get(metric), y["scores"].get(metric)) for x, y in zip(a.predictions, b.predictions)]
    pairs = [(p, q) for p, q in pairs if p is not None and q is not None]
    if len(pairs) < 2:
        return None
    return [p for p, _ in pairs], [q for _, q in pairs]


def _disagreements(a: EvalResult, b: EvalResult) -> list[dict[str, Any]]:
    key = "accuracy" if "accuracy" in a.predictions[0].get("scores", {}) else "exact_match"
    out = []
    for x, y in zip(a.predictions, b.predictions):
        ax, by = x["scores"].get(key), y["scores"].get(key)
        if ax != by:
            out.append({"prompt": x["prompt"], "reference": x["reference"], "a": x["prediction"],
                        "b": y["prediction"], "a_correct": bool(ax), "b_correct": bool(by)})
        if len(out) >= MAX_EXAMPLES:
            break
    return out
