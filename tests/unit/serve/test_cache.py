"""Tests for serve/cache.py: bounded, least-recently-used, off at size 0."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.serve.cache import ResponseCache


def test_least_recently_used_goes_first():
    cache = ResponseCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_size_zero_is_off_and_negative_is_refused():
    cache = ResponseCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError):
        ResponseCache(-1)


@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 9), st.integers())))
def test_never_holds_more_than_its_bound_and_keeps_the_latest_value(size, puts):
    cache = ResponseCache(size)
    for key, value in puts:
        cache.put(key, value)
        assert len(cache) <= size and cache.get(key) == value
