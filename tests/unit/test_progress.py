"""Tests for domaintune/progress.py: the shared progress bar."""

from __future__ import annotations

import io

from rich.console import Console

from domaintune import progress


def test_disabled_or_empty_bar_is_a_no_op():
    for enabled, total in ((False, 10), (True, 0), (True, None)):
        with progress.bar("x", total, enabled) as advance:
            assert advance(3) is None


def test_bar_counts_to_total_and_shows_eta(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda **_kw: Console(file=out, force_terminal=True, width=120))
    with progress.bar("generate", 4) as advance:
        advance(3)
        advance(1)
    text = out.getvalue()
    assert "generate" in text and "4/4" in text and "eta" in text
