"""Shared by the reader tests: read a file the way prepare does and reconcile its ledger."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from domaintune.data.readers import read_rows
from domaintune.data.rejects import Ledger


def _read_and_reconcile(path: str) -> Ledger:
    """Every row of `path` counted into a ledger as prepare counts it; `Ledger.check` raises on a lost line."""
    ledger = Ledger()
    for row in read_rows(path, "s", tally=partial(ledger.count_file, "s")):
        assert (row.obj is None) == (row.error is not None)
        ledger.count_row("s", row.file, row.line, row.last_line)
        ledger.rejected[("s", row.error or "ok")] += 1
    ledger.check()
    return ledger


@pytest.fixture(scope="session")
def read_and_reconcile() -> Callable[[str], Ledger]:
    """Session-scoped, so hypothesis tests may use it."""
    return _read_and_reconcile
