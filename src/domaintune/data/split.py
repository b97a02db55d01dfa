"""Deterministic, stratified train/val/test assignment.

Rows are grouped by stratum (for example the source file or a label; None is a stratum of
its own), each stratum is shuffled with its own seeded generator and cut by counts rounded
with the largest remainder method, so every stratum follows the ratios to within one row and
adding rows to one stratum never reshuffles another.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from domaintune.data.mix import apportion
from domaintune.errors import UserError

__all__ = ["SPLITS", "assign_splits"]

SPLITS = ("train", "val", "test")
_RATIO_SUM_TOLERANCE = 1e-6


def assign_splits(strata: Sequence[str | None], ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> list[str]:
    """Assign each row to "train", "val" or "test".

    Within each stratum the rows are shuffled with `random.Random(f"{seed}:{stratum}")`; the
    first n_train go to train, the next n_val to val, the rest to test, with the counts
    rounded by the largest remainder method. A stratum of one row goes to train (unless the
    train ratio is 0).

    Args:
        strata: one stratum per row; None is its own stratum.
        ratios: (train, val, test) shares, each >= 0, summing to 1. Zeros are allowed.
        seed: the same seed and strata always give the same assignment.

    Returns:
        One split name per row, in row order.

    Raises:
        UserError: if a ratio is negative or they do not sum to 1.

    Example:
        >>> assign_splits(["a"] * 10, (0.8, 0.2, 0.0)).count("val")
        2
    """
    _check_ratios(ratios)
    rows_by_stratum: dict[str | None, list[int]] = {}
    for row, stratum in enumerate(strata):
        rows_by_stratum.setdefault(stratum, []).append(row)
    assigned = [SPLITS[0]] * len(strata)
    for stratum, rows in rows_by_stratum.items():
        random.Random(f"{seed}:{stratum}").shuffle(rows)
        start = 0
        for name, count in zip(SPLITS, _stratum_counts(len(rows), ratios)):
            for row in rows[start:start + count]:
                assigned[row] = name
            start += count
    return assigned


def _stratum_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    # A lone row would otherwise land wherever rounding sends it (val, for ratios like
    # (0.4, 0.6, 0)); a lone example is worth more for training than as a one-row metric.
    if n == 1 and ratios[0] > 0:
        return [1, 0, 0]
    return apportion(n, ratios)


def _check_ratios(ratios: tuple[float, float, float]) -> None:
    shown = ", ".join(f"{r:g}" for r in ratios)
    if len(ratios) != len(SPLITS):
        raise UserError(f"split ratios must be three numbers (train, val, test), got ({shown})",
                        hint="for example (0.8, 0.1, 0.1)")
    if any(r < 0 for r in ratios):
        raise UserError(f"split ratios must be >= 0, got ({shown})", hint="for example (0.9, 0.1, 0.0)")
    if abs(sum(ratios) - 1.0) > _RATIO_SUM_TOLERANCE:
        raise UserError(f"split ratios ({shown}) sum to {sum(ratios):g}, not 1",
                        hint="scale them so they sum to 1, for example (0.8, 0.1, 0.1)")
