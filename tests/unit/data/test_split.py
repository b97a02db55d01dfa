"""Tests for domaintune.data.split: deterministic, stratified train/val/test assignment."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.data.split import SPLITS, assign_splits
from domaintune.errors import UserError


def _counts(splits: list[str], strata: list, stratum) -> tuple[int, int, int]:
    counter = Counter(s for s, g in zip(splits, strata) if g == stratum)
    return counter["train"], counter["val"], counter["test"]


def test_every_row_assigned_and_deterministic():
    strata = ["a"] * 100 + ["b"] * 50 + [None] * 7
    splits = assign_splits(strata, seed=3)
    assert len(splits) == len(strata)
    assert set(splits) <= set(SPLITS)
    assert assign_splits(strata, seed=3) == splits


def test_ratios_followed_within_each_stratum():
    strata = ["a", "b", None] * 7 + ["a"] * 93 + ["b"] * 43
    splits = assign_splits(strata, (0.8, 0.1, 0.1))
    assert _counts(splits, strata, "a") == (80, 10, 10)
    assert _counts(splits, strata, "b") == (40, 5, 5)
    # 7 rows: exact shares 5.6/0.7/0.7 -> floors 5/0/0, the two leftover rows go to the
    # largest remainders (val and test).
    assert _counts(splits, strata, None) == (5, 1, 1)


def test_seed_changes_the_assignment_but_not_the_counts():
    strata = ["a"] * 200
    first, second = assign_splits(strata, seed=0), assign_splits(strata, seed=1)
    assert first != second
    assert Counter(first) == Counter(second) == {"train": 160, "val": 20, "test": 20}


def test_zero_ratio_gets_no_rows():
    strata = ["a"] * 33 + ["b"] * 9 + ["c"]
    splits = assign_splits(strata, (0.9, 0.1, 0.0))
    assert "test" not in splits
    assert _counts(splits, strata, "a") == (30, 3, 0)


def test_single_row_stratum_goes_to_train():
    strata = ["lonely", "x", "x", "x"]
    assert assign_splits(strata, (0.4, 0.6, 0.0))[0] == "train"
    assert assign_splits(strata, (0.0, 0.5, 0.5))[0] != "train"


def test_none_is_its_own_stratum():
    strata = [None] * 10 + ["None"] * 10
    splits = assign_splits(strata, (0.5, 0.5, 0.0))
    assert _counts(splits, strata, None) == (5, 5, 0)
    assert _counts(splits, strata, "None") == (5, 5, 0)


def test_other_strata_do_not_change_a_strata_assignment():
    alone = assign_splits(["a"] * 30, seed=5)
    mixed_strata = ["a", "b", "b"] * 30
    mixed = assign_splits(mixed_strata, seed=5)
    assert [s for s, g in zip(mixed, mixed_strata) if g == "a"] == alone


@pytest.mark.parametrize("ratios, shown", [((0.8, 0.3, 0.1), "sum to 1.2"), ((1.1, -0.1, 0.0), "-0.1"),
                                           ((0.5, 0.5), "three numbers")])
def test_bad_ratios_raise_user_error_with_values(ratios, shown):
    with pytest.raises(UserError) as err:
        assign_splits(["a"], ratios)
    assert shown in str(err.value)
    assert "fix:" in str(err.value)


@st.composite
def _ratios(draw):
    weights = draw(st.lists(st.integers(0, 10), min_size=3, max_size=3).filter(any))
    return tuple(w / sum(weights) for w in weights)


@given(strata=st.lists(st.sampled_from(["a", "b", "c", None]), max_size=200), ratios=_ratios(),
       seed=st.integers(0, 3))
def test_each_stratum_within_one_row_of_exact(strata, ratios, seed):
    splits = assign_splits(strata, ratios, seed)
    assert splits == assign_splits(strata, ratios, seed)
    for stratum in set(strata):
        counts = _counts(splits, strata, stratum)
        n = sum(counts)
        assert n == strata.count(stratum)
        if n == 1 and ratios[0] > 0:
            assert counts == (1, 0, 0)
            continue
        for count, ratio in zip(counts, ratios):
            assert abs(count - n * ratio) < 1
            assert ratio > 0 or count == 0
