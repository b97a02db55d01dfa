"""Calibration of closed-set confidences: does an answer given with 80 % confidence hold 80 % of the time?

Predictions are put into equal-width confidence bins; each bin's mean confidence is set against
its accuracy (the reliability diagram in report.html), and the expected calibration error (ECE)
is the sample-weighted mean gap between the two (Guo et al., 2017, "On Calibration of Modern
Neural Networks", eq. 3).

    >>> calibration([0.9, 0.8, 0.3], [True, True, False], bins=2)["ece"]
    20.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def calibration(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict[str, Any]:
    """Reliability bins and the expected calibration error, in percent.

    Args:
        confidences: each prediction's probability, in [0, 1].
        correct: whether each prediction was right.
        bins: equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last.

    Returns:
        `{"ece", "mean_confidence", "accuracy", "n", "bins": [{"low", "high", "n", "confidence",
        "accuracy"}]}` with the percentages of each non-empty bin.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} outcomes")
    n = len(confidences)
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for conf, ok in zip(confidences, correct):
        groups[min(bins - 1, int(float(conf) * bins))].append((float(conf), bool(ok)))
    table, ece = [], 0.0
    for i, group in enumerate(groups):
        if not group:
            continue
        conf = sum(c for c, _ in group) / len(group)
        acc = sum(ok for _, ok in group) / len(group)
        ece += len(group) / n * abs(acc - conf)
        table.append({"low": i / bins, "high": (i + 1) / bins, "n": len(group),
                      "confidence": 100 * conf, "accuracy": 100 * acc})
    return {"ece": 100 * ece, "mean_confidence": 100 * sum(confidences) / n if n else None,
            "accuracy": 100 * sum(map(bool, correct)) / n if n else None, "n": n, "bins": table}
