"""Tests for domaintune.data.mix: apportioning, mix plans and row sampling."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.data.mix import apportion, plan_mix, sample_rows
from domaintune.errors import UserError

AVAILABLE = {"general": 1000, "domain": 300, "scenario": 50}
RATIOS = {"general": 0.3, "domain": 0.6, "scenario": 0.1}


def test_apportion_largest_remainder():
    assert apportion(10, [0.8, 0.1, 0.1]) == [8, 1, 1]
    assert apportion(7, [0.8, 0.1, 0.1]) == [5, 1, 1]  # 5.6/0.7/0.7: leftovers to .7 and .7
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]  # ties go to the earlier weight
    assert apportion(5, [0.5, 0.0, 0.5]) == [3, 0, 2]
    assert apportion(0, [0.3, 0.7]) == [0, 0]


@given(total=st.integers(0, 10_000), weights=st.lists(st.floats(0, 1), min_size=1, max_size=6)
       .filter(lambda w: sum(w) > 1e-3))
def test_apportion_sums_and_stays_within_one(total, weights):
    counts = apportion(total, weights)
    assert sum(counts) == total
    for count, weight in zip(counts, weights):
        assert abs(count - total * weight / sum(weights)) < 1 + 1e-9
        assert weight > 0 or count == 0


def test_under_uses_the_scarcest_source_in_full():
    # general 1000/0.3 = 3333, domain 300/0.6 = 500, scenario 50/0.1 = 500 -> total 500.
    assert plan_mix(AVAILABLE, RATIOS, "under") == {"general": 150, "domain": 300, "scenario": 50}


def test_over_uses_the_largest_source_in_full():
    # total = ceil(1000/0.3) = 3334 -> 1000.2/2000.4/333.4; the leftover row goes to the
    # first of the tied .4 remainders (domain).
    plan = plan_mix(AVAILABLE, RATIOS, "over")
    assert plan == {"general": 1000, "domain": 2001, "scenario": 333}
    assert all(plan[s] >= AVAILABLE[s] for s in AVAILABLE)


def test_explicit_total_up_and_down_samples():
    assert plan_mix(AVAILABLE, RATIOS, total=1000) == {"general": 300, "domain": 600, "scenario": 100}
    assert plan_mix(AVAILABLE, RATIOS, total=7) == {"general": 2, "domain": 4, "scenario": 1}
    assert plan_mix(AVAILABLE, RATIOS, total=0) == {"general": 0, "domain": 0, "scenario": 0}


def test_zero_ratio_source_gets_nothing_and_does_not_bound_the_total():
    available = {"a": 10, "b": 1000, "empty": 0}
    plan = plan_mix(available, {"a": 0.0, "b": 1.0, "empty": 0.0, "absent": 0.0})
    assert plan == {"a": 0, "b": 1000, "empty": 0, "absent": 0}


def test_float_ratios_do_not_lose_a_row():
    # 7 / 0.7 is 10.000000000000002 and 3 / 0.3 is 10.000000000000002 in floats.
    assert plan_mix({"a": 7, "b": 3}, {"a": 0.7, "b": 0.3}) == {"a": 7, "b": 3}
    assert plan_mix({"a": 7, "b": 3}, {"a": 0.7, "b": 0.3}, "over") == {"a": 7, "b": 3}


@given(available=st.lists(st.integers(1, 5000), min_size=1, max_size=5),
       weights=st.lists(st.integers(0, 20), min_size=5, max_size=5).filter(any),
       strategy=st.sampled_from(["under", "over"]))
def test_strategies_never_resample_the_wrong_way(available, weights, strategy):
    sources = [f"s{i}" for i in range(len(available))]
    weights = weights[:len(available)]
    if not any(weights):
        weights[0] = 1
    ratios = {s: w / sum(weights) for s, w in zip(sources, weights)}
    plan = plan_mix(dict(zip(sources, available)), ratios, strategy)
    for source, rows in zip(sources, available):
        if ratios[source] == 0:
            assert plan[source] == 0
        elif strategy == "under":
            assert plan[source] <= rows
        else:
            assert plan[source] >= rows


@pytest.mark.parametrize("available, ratios, strategy, message", [
    ({"a": 5}, {"a": 0.5, "zz": 0.5}, "under", "source 'zz', which has no rows (sources with rows: 'a')"),
    ({"a": 5, "b": 0}, {"a": 0.5, "b": 0.5}, "under", "source 'b', which has no rows"),
    ({"a": 5, "b": 3, "c": 1}, {"a": 1.0}, "under", "no mix ratio: 'b', 'c'"),
    ({"a": 5, "b": 3}, {"a": 0.5, "b": 0.3}, "under", "sum to 0.8"),
    ({"a": 5, "b": 3}, {"a": 1.2, "b": -0.2}, "under", "negative (-0.2)"),
    ({"a": 5}, {"a": 1.0}, "biggest", "unknown mix strategy 'biggest'"),
])
def test_errors_are_one_line_user_errors_with_a_fix(available, ratios, strategy, message):
    with pytest.raises(UserError) as err:
        plan_mix(available, ratios, strategy)
    assert message in str(err.value)
    assert "fix:" in str(err.value) and "\n" not in str(err.value)


def test_missing_ratio_hint_says_give_every_source_a_ratio_or_none():
    with pytest.raises(UserError, match="give every source a ratio, or give none"):
        plan_mix({"a": 5, "b": 3}, {"a": 1.0})


def test_sample_rows_down_is_deterministic_without_replacement():
    rows = sample_rows(1000, 300, seed="domain:0")
    assert rows == sample_rows(1000, 300, seed="domain:0")
    assert rows != sample_rows(1000, 300, seed="domain:1")
    assert len(set(rows)) == 300 and all(0 <= r < 1000 for r in rows)
    assert sorted(sample_rows(5, 5, seed=1)) == [0, 1, 2, 3, 4]
    assert sample_rows(5, 0, seed=1) == []


@given(n_available=st.integers(1, 300), n_target=st.integers(0, 2000), seed=st.integers(0, 5))
def test_sample_rows_properties(n_available, n_target, seed):
    rows = sample_rows(n_available, n_target, seed)
    assert rows == sample_rows(n_available, n_target, seed)
    assert len(rows) == n_target
    counts = Counter(rows)
    assert all(0 <= r < n_available for r in counts)
    if n_target <= n_available:
        assert max(counts.values(), default=1) == 1
    else:  # up-sampling: every row at least once, repeats spread evenly
        assert len(counts) == n_available
        assert max(counts.values()) - min(counts.values()) <= 1


def test_sample_rows_errors():
    with pytest.raises(UserError, match="no rows"):
        sample_rows(0, 3, seed=0)
    with pytest.raises(UserError):
        sample_rows(5, -1, seed=0)
    assert sample_rows(0, 0, seed=0) == []
