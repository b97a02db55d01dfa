"""Paired significance tests for `domaintune compare`: is model B really better than model A?

Both models answer the same test examples, so every test here is paired: McNemar on right/wrong
outcomes, a paired bootstrap on any per-example score, a paired t-test on continuous scores and
a sign test on wins and losses (human review). `compare_metric` picks the tests that fit a metric
and writes the one-line verdict that `compare` prints and the HTML report shows, e.g.

    B better on exact_match: +23.4 points, 95% CI [17.1, 29.8], p < 0.001

Differences are always B - A, in the scores' own unit: percent points for `eval.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

__all__ = ["BootstrapResult", "TestResult", "compare_metric", "format_p", "mcnemar", "paired_bootstrap",
           "paired_t", "sign_test", "verdict"]

EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant pairs
_CHUNK = 1000  # bootstrap resamples drawn at once: 1000 x n int64 indices stay a few MB


@dataclass(frozen=True)
class TestResult:
    """The outcome of a hypothesis test.

    Attributes:
        test: "mcnemar", "paired_t" or "sign_test".
        statistic: the test statistic (chi-square, t, or the number of B wins).
        p_value: two-sided p-value.
        method: how p was computed, e.g. "exact binomial" or "chi-square, continuity corrected".
        n: the pairs that inform the test (discordant pairs for McNemar, decided items for the
            sign test, all pairs for the t-test).
        counts: test-specific counts, e.g. {"a_only": 3, "b_only": 12} for McNemar.
    """

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: float
    p_value: float
    method: str
    n: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (an infinite statistic becomes None)."""
        out = asdict(self)
        out["statistic"] = None if math.isinf(self.statistic) else self.statistic
        return out


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of the mean difference B - A.

    Attributes:
        mean_diff: the observed mean of b - a.
        ci_low: lower end of the percentile confidence interval.
        ci_high: upper end.
        p_value: two-sided p for "no difference" (see `paired_bootstrap`).
        confidence: the interval's level, e.g. 0.95.
        n_resamples: bootstrap resamples drawn.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float = 0.95
    n_resamples: int = 10000

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two equal, non-empty 1-D score sequences, got {a.shape} and {b.shape}")
    return a, b


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> TestResult:
    """McNemar's test: do A and B differ in how often they are right, on the same examples?

    Only discordant pairs count: `a_only` (A right, B wrong) and `b_only`. Below 25 discordant
    pairs the exact two-sided binomial test is used, otherwise the chi-square statistic
    (|a_only - b_only| - 1)^2 / (a_only + b_only) with continuity correction, 1 degree of freedom.

    Args:
        a_correct: whether A got each example right.
        b_correct: whether B got each example right, same order.

    Returns:
        A `TestResult`; `method` says which variant ran; `statistic` is chi-square, or the
        count `b_only` for the exact test. No discordant pairs give p = 1.

    Raises:
        ValueError: if the sequences are empty or differ in length.

    Example:
        >>> mcnemar([True] * 7, [False] + [True] * 6).p_value
        1.0
    """
    a, b = _paired(a_correct, b_correct)
    a, b = a.astype(bool), b.astype(bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    counts = {"a_only": a_only, "b_only": b_only, "both": int(np.sum(a & b)), "neither": int(np.sum(~a & ~b))}
    n = a_only + b_only
    if n == 0:
        return TestResult("mcnemar", 0.0, 1.0, "no discordant pairs", 0, counts)
    if n < EXACT_BELOW:
        p = sps.binomtest(b_only, n, 0.5).pvalue
        return TestResult("mcnemar", float(b_only), float(p), "exact binomial", n, counts)
    chi2 = (abs(a_only - b_only) - 1) ** 2 / n
    return TestResult("mcnemar", chi2, float(sps.chi2.sf(chi2, df=1)),
                      "chi-square, continuity corrected", n, counts)


def paired_bootstrap(a_scores: Sequence[float], b_scores: Sequence[float], *, n_resamples: int = 10000,
                     seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """Paired bootstrap of the mean difference B - A, with a percentile confidence interval.

    Examples are resampled with replacement (the same indices for A and B). The p-value tests
    "no difference" by centring the bootstrap distribution on zero: the share of resampled
    differences at least as far from the observed mean as the observed mean is from zero, with
    one added to numerator and denominator so it is never 0 (Davison & Hinkley 1997, ch. 4).

    Args:
        a_scores: A's per-example scores.
        b_scores: B's per-example scores, same examples in the same order.
        n_resamples: bootstrap resamples.
        seed: random seed; the same seed gives the same result.
        confidence: level of the interval, in (0, 1).

    Returns:
        A `BootstrapResult`.

    Raises:
        ValueError: if the sequences are empty or differ in length, or an argument is out of range.

    Example:
        >>> r = paired_bootstrap([0, 0, 1, 0], [1, 1, 1, 0], n_resamples=2000)
        >>> r.mean_diff, r.ci_low <= 0.5 <= r.ci_high
        (0.5, True)
    """
    a, b = _paired(a_scores, b_scores)
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        diff[rng.integers(0, diff.size, size=(min(_CHUNK, n_resamples - start), diff.size))].mean(axis=1)
        for start in range(0, n_resamples, _CHUNK)])
    observed = float(diff.mean())
    # A tolerance, so float noise in the resampled means does not decide ties at |d| == |observed|.
    far = np.abs(means - observed) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    p = (1 + int(far.sum())) / (n_resamples + 1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(observed, float(low), float(high), min(1.0, p), confidence, n_resamples)


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Paired t-test on B - A (scipy.stats.ttest_rel); t > 0 means B scores higher.

    When every difference is the same, the t statistic is undefined: all-zero differences give
    t = 0, p = 1; a constant non-zero difference gives t = +-inf, p = 0.

    Example:
        >>> round(paired_t([1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 4.0, 5.5]).p_value, 3)
        0.016
    """
    a, b = _paired(a, b)
    diff = b - a
    if np.all(diff == diff[0]):
        if diff[0] == 0:
            return TestResult("paired_t", 0.0, 1.0, "all differences zero", a.size)
        return TestResult("paired_t", math.copysign(math.inf, diff[0]), 0.0, "constant difference", a.size)
    res = sps.ttest_rel(b, a)
    return TestResult("paired_t", float(res.statistic), float(res.pvalue), f"Student t, df={a.size - 1}", a.size)


def sign_test(wins: int, losses: int) -> TestResult:
    """Two-sided sign test: are B's wins over A more than chance (ties left out)?

    Args:
        wins: items where B beat A.
        losses: items where A beat B.

    Returns:
        A `TestResult` with statistic = wins; p = 1 when there is nothing to decide.

    Example:
        >>> round(sign_test(9, 1).p_value, 4)
        0.0215
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins}, {losses}")
    n = wins + losses
    p = 1.0 if n == 0 else float(sps.binomtest(wins, n, 0.5).pvalue)
    return TestResult("sign_test", float(wins), p, "exact binomial", n, {"wins": wins, "losses": losses})


def format_p(p: float) -> str:
    """Format a p-value for a verdict: "p < 0.001", "p = 0.041", "p = 0.41".

    Example:
        >>> format_p(0.00002), format_p(0.0412), format_p(0.4123)
        ('p < 0.001', 'p = 0.041', 'p = 0.41')
    """
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def verdict(metric: str, a_name: str, b_name: str, boot: BootstrapResult, p_value: float | None = None,
            *, alpha: float = 0.05, unit: str = "points") -> str:
    """The one-line verdict for a metric.

    Args:
        metric: the metric name.
        a_name: name of model A.
        b_name: name of model B.
        boot: the paired bootstrap of B - A (gives the difference and the interval).
        p_value: the deciding p-value (McNemar's or the t-test's); default the bootstrap's.
        alpha: significance level.
        unit: unit of the difference.

    Returns:
        "B better on exact_match: +23.4 points, 95% CI [17.1, 29.8], p < 0.001" when p < alpha
        (the figures are then the winner's lead), otherwise
        "no significant difference on exact_match: B - A = +1.2 points, 95% CI [-3.0, 5.1] (p = 0.41)".

    Example:
        >>> verdict("exact_match", "base", "tuned", BootstrapResult(23.4, 17.1, 29.8, 0.0001))
        'tuned better on exact_match: +23.4 points, 95% CI [17.1, 29.8], p < 0.001'
    """
    p = boot.p_value if p_value is None else p_value
    level = f"{round(100 * boot.confidence):g}% CI"
    if p < alpha and boot.mean_diff != 0:
        winner, sign = (b_name, 1.0) if boot.mean_diff > 0 else (a_name, -1.0)
        low, high = sorted((sign * boot.ci_low, sign * boot.ci_high))
        return (f"{winner} better on {metric}: {sign * boot.mean_diff:+.1f} {unit}, "
                f"{level} [{low:.1f}, {high:.1f}], {format_p(p)}")
    return (f"no significant difference on {metric}: {b_name} - {a_name} = {boot.mean_diff:+.1f} {unit}, "
            f"{level} [{boot.ci_low:.1f}, {boot.ci_high:.1f}] ({format_p(p)})")


def compare_metric(a_scores: Sequence[float], b_scores: Sequence[float], *, binary: bool,
                   metric: str = "metric", names: tuple[str, str] = ("A", "B"), n_resamples: int = 10000,
                   seed: int = 0, confidence: float = 0.95, alpha: float = 0.05) -> dict:
    """Run the tests that fit a metric on paired per-example scores and write the verdict.

    Binary metrics (right/wrong) get McNemar (which decides) and a bootstrap for the interval;
    other metrics get a paired t-test (which decides) and the bootstrap. For a binary metric,
    any score > 0 is "right" and the bootstrap runs on 0/100, so the difference reads in points
    whether the scores are bools, 0/1 or 0/100.

    Args:
        a_scores: A's per-example scores (e.g. `MetricResult.per_example`).
        b_scores: B's, same examples in the same order.
        binary: whether the metric is right/wrong per example (`MetricResult.binary`).
        metric: the metric's name, for the verdict.
        names: display names of A and B.
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
        confidence: interval level.
        alpha: significance level.

    Returns:
        A JSON-ready dict: metric, a_name, b_name, n, a_mean, b_mean, diff, ci_low, ci_high,
        confidence, bootstrap (dict), test (the deciding test as a dict), p_value, significant,
        verdict.

    Raises:
        ValueError: if the score sequences are empty or differ in length.

    Example:
        >>> out = compare_metric([0] * 40, [100] * 30 + [0] * 10, binary=True, metric="exact_match")
        >>> out["verdict"]
        'B better on exact_match: +75.0 points, 95% CI [62.5, 87.5], p < 0.001'
    """
    a, b = _paired(a_scores, b_scores)
    if binary:
        a, b = (a > 0) * 100.0, (b > 0) * 100.0
        test = mcnemar(a > 0, b > 0)
    else:
        test = paired_t(a, b)
    boot = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed, confidence=confidence)
    a_name, b_name = names
    return {
        "metric": metric, "a_name": a_name, "b_name": b_name, "n": int(a.size),
        "a_mean": float(a.mean()), "b_mean": float(b.mean()), "diff": boot.mean_diff,
        "ci_low": boot.ci_low, "ci_high": boot.ci_high, "confidence": confidence,
        "bootstrap": boot.to_dict(), "test": test.to_dict(), "p_value": test.p_value,
        "significant": bool(test.p_value < alpha),
        "verdict": verdict(metric, a_name, b_name, boot, test.p_value, alpha=alpha),
    }
