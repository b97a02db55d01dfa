"""Tests for domaintune.data.rejects: the ledger reconciles rows against each file's physical lines."""

from __future__ import annotations

import pytest

from domaintune.data.readers import FileTally
from domaintune.data.rejects import Ledger


def _ledger(spans: list[tuple[int, int]], tally: FileTally) -> Ledger:
    ledger = Ledger()
    for first, last in spans:
        ledger.count_row("s", "f.csv", first, last)
        ledger.rejected[("s", "invalid_csv")] += 1
    ledger.count_file("s", tally)
    return ledger


def test_ledger_accepts_rows_that_cover_every_line():
    _ledger([(2, 2), (3, 5), (7, 7)], FileTally("f.csv", units=7, skipped=2)).check()


def test_ledger_catches_lines_no_row_covers():
    ledger = _ledger([(2, 2), (7, 7)], FileTally("f.csv", units=7, skipped=2))
    with pytest.raises(RuntimeError, match=r"f\.csv.*7 lines.*2 skipped.*2 in rows"):
        ledger.check()


def test_ledger_counts_overlapping_rows_once():
    # Two JSON elements on one line cover that line once.
    _ledger([(1, 1), (1, 1), (2, 3)], FileTally("f.csv", units=3, skipped=0)).check()
    with pytest.raises(RuntimeError):
        _ledger([(1, 2), (2, 2)], FileTally("f.csv", units=3, skipped=0)).check()
