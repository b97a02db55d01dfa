"""Paired significance tests against textbook answers, and the verdict line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.eval.stats import (
    EXACT_BELOW,
    BootstrapResult,
    compare_metric,
    format_p,
    mcnemar,
    paired_bootstrap,
    paired_t,
    sign_test,
    verdict,
)


def outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


# --- McNemar ----------------------------------------------------------------------------------

def test_mcnemar_wikipedia_drug_example_chi_square():
    # Wikipedia "McNemar's test": 314 patients, cells 101 / 121 / 59 / 33. Uncorrected statistic
    # (121 - 59)^2 / 180 = 21.35; with continuity correction (62 - 1)^2 / 180 = 20.672, p ~ 5e-6.
    result = mcnemar(*outcomes(101, 121, 59, 33))
    assert result.method == "chi-square, continuity corrected"
    assert result.statistic == pytest.approx(61 ** 2 / 180)
    assert result.statistic == pytest.approx(20.672222, abs=1e-6)
    # The chi-square(1) tail is erfc(sqrt(x / 2)).
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(result.statistic / 2)))
    assert result.n == 180 and result.counts == {"a_only": 121, "b_only": 59, "both": 101, "neither": 33}


def test_mcnemar_exact_for_few_discordant_pairs():
    # 11 changed one way, 3 the other: p = 2 * (C(14,0)+C(14,1)+C(14,2)+C(14,3)) / 2^14.
    result = mcnemar(*outcomes(1, 11, 3, 5))
    assert result.method == "exact binomial"
    assert result.p_value == pytest.approx(2 * (1 + 14 + 91 + 364) / 2 ** 14)
    assert result.p_value == pytest.approx(0.057373046875)


def test_mcnemar_switches_at_25_discordant_pairs():
    assert mcnemar(*outcomes(0, 20, EXACT_BELOW - 1 - 20, 0)).method == "exact binomial"
    assert mcnemar(*outcomes(0, 20, EXACT_BELOW - 20, 0)).method.startswith("chi-square")


def test_mcnemar_no_discordant_pairs_and_symmetry():
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    a, b = outcomes(3, 9, 2, 4)
    assert mcnemar(a, b).p_value == pytest.approx(mcnemar(b, a).p_value)


def test_mcnemar_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal, non-empty"):
        mcnemar([True], [True, False])


# --- paired bootstrap -------------------------------------------------------------------------

def test_bootstrap_is_reproducible_and_centred_on_the_observed_mean():
    rng = np.random.default_rng(3)
    a = rng.normal(50, 10, 400)
    b = a + 2 + rng.normal(0, 5, 400)
    r1 = paired_bootstrap(a, b, seed=7)
    assert r1 == paired_bootstrap(a, b, seed=7)
    assert r1.mean_diff == pytest.approx(float(np.mean(b - a)))
    # Large n: the percentile interval is close to mean +- 1.96 standard errors.
    se = np.std(b - a, ddof=1) / math.sqrt(400)
    assert r1.ci_low == pytest.approx(r1.mean_diff - 1.96 * se, abs=0.1 * se * 1.96)
    assert r1.ci_high == pytest.approx(r1.mean_diff + 1.96 * se, abs=0.1 * se * 1.96)
    assert r1.p_value < 0.001


def test_bootstrap_without_difference_is_not_significant():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    b = a + rng.normal(0, 1, 200)
    b = b - np.mean(b - a)  # zero mean difference
    r = paired_bootstrap(a, b, n_resamples=2000)
    assert r.p_value > 0.9 and r.ci_low < 0 < r.ci_high


def test_bootstrap_identical_scores_give_p_one_and_never_zero():
    assert paired_bootstrap([1, 0, 1], [1, 0, 1], n_resamples=500).p_value == 1.0
    r = paired_bootstrap([0] * 50, [1] * 50, n_resamples=999)
    assert r.p_value == pytest.approx(1 / 1000)  # every resample is as far as observed: only the +1
    assert (r.ci_low, r.ci_high) == (1.0, 1.0)


def test_bootstrap_chunks_give_the_requested_number_of_resamples():
    # 2500 resamples span three chunks of 1000; the quantiles must come from all of them.
    r = paired_bootstrap(np.zeros(30), np.arange(30.0), n_resamples=2500, confidence=0.9)
    assert r.n_resamples == 2500 and r.confidence == 0.9
    assert r.ci_low < r.mean_diff < r.ci_high


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=2, max_size=40))
def test_bootstrap_swapping_a_and_b_negates_everything(pairs):
    a, b = (np.array(x) for x in zip(*pairs))
    r = paired_bootstrap(a, b, n_resamples=300)
    s = paired_bootstrap(b, a, n_resamples=300)
    assert r.ci_low <= r.ci_high
    assert s.mean_diff == pytest.approx(-r.mean_diff, abs=1e-9)
    assert s.ci_low == pytest.approx(-r.ci_high, abs=1e-6)
    assert 0 < r.p_value <= 1


# --- t-test and sign test ---------------------------------------------------------------------

def test_paired_t_matches_hand_formula():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([1.5, 2.5, 3.0, 5.0, 6.5])
    d = b - a
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    result = paired_t(a, b)
    assert result.statistic == pytest.approx(t)
    assert result.statistic > 0  # B higher
    assert result.method == "Student t, df=4"


def test_paired_t_degenerate_differences():
    assert paired_t([1, 2], [1, 2]).p_value == 1.0
    const = paired_t([1, 2], [2, 3])
    assert const.p_value == 0.0 and const.statistic == math.inf
    assert const.to_dict()["statistic"] is None


def test_sign_test_exact():
    # 9 wins, 1 loss: p = 2 * (C(10,0) + C(10,1)) / 2^10.
    assert sign_test(9, 1).p_value == pytest.approx(2 * 11 / 1024)
    assert sign_test(0, 0).p_value == 1.0
    assert sign_test(3, 7).p_value == pytest.approx(sign_test(7, 3).p_value)
    with pytest.raises(ValueError):
        sign_test(-1, 2)


# --- verdict ----------------------------------------------------------------------------------

def test_format_p():
    assert format_p(0.0009) == "p < 0.001"
    assert format_p(0.001) == "p = 0.001"
    assert format_p(0.0412) == "p = 0.041"
    assert format_p(0.41) == "p = 0.41"


def test_verdict_b_better_a_better_and_no_difference():
    assert verdict("exact_match", "A", "B", BootstrapResult(23.4, 17.1, 29.8, 0.0001)) == \
        "B better on exact_match: +23.4 points, 95% CI [17.1, 29.8], p < 0.001"
    # A wins: the figures are A's lead, the interval flipped.
    assert verdict("bleu", "base", "tuned", BootstrapResult(-5.0, -8.0, -2.0, 0.2), p_value=0.004) == \
        "base better on bleu: +5.0 points, 95% CI [2.0, 8.0], p = 0.004"
    assert verdict("rouge1", "A", "B", BootstrapResult(1.2, -3.0, 5.1, 0.41)) == \
        "no significant difference on rouge1: B - A = +1.2 points, 95% CI [-3.0, 5.1] (p = 0.41)"
    assert verdict("x", "A", "B", BootstrapResult(2.0, 0.5, 3.5, 0.03, confidence=0.9), alpha=0.01) \
        .startswith("no significant difference on x: B - A = +2.0 points, 90% CI")


# --- compare_metric ---------------------------------------------------------------------------

def test_compare_metric_binary_uses_mcnemar_and_points():
    a = [0.0] * 40 + [100.0] * 10
    b = [100.0] * 30 + [0.0] * 10 + [100.0] * 10
    out = compare_metric(a, b, binary=True, metric="exact_match", names=("base", "tuned"), n_resamples=2000)
    assert out["test"]["test"] == "mcnemar" and out["test"]["counts"]["b_only"] == 30
    assert out["diff"] == pytest.approx(60.0) and out["a_mean"] == 20.0 and out["b_mean"] == 80.0
    assert out["significant"] and out["verdict"].startswith("tuned better on exact_match: +60.0 points")
    # Bools and 0/1 give the same figures in points.
    as_bools = compare_metric([x > 0 for x in a], [x > 0 for x in b], binary=True, metric="exact_match",
                              names=("base", "tuned"), n_resamples=2000)
    assert as_bools["diff"] == out["diff"] and as_bools["p_value"] == out["p_value"]


def test_compare_metric_continuous_uses_t_test():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 100, 60)
    b = a + rng.normal(0, 5, 60)
    out = compare_metric(a, b, binary=False, metric="chrf", n_resamples=2000)
    assert out["test"]["test"] == "paired_t"
    assert out["p_value"] == pytest.approx(paired_t(a, b).p_value)
    assert out["significant"] == (out["p_value"] < 0.05)
    assert out["verdict"].startswith("no significant difference on chrf") != out["significant"]
