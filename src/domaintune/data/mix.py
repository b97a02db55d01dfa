"""Mixing sources to target ratios (for example general=0.3, domain=0.6, scenario=0.1).

`plan_mix` turns row counts and ratios into a target row count per source; `sample_rows`
picks which rows fill each target, down-sampling without replacement or up-sampling by
repeating rows. `apportion` (largest-remainder rounding) is the one place integer counts are
derived from ratios; `split.assign_splits` uses it too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from domaintune.errors import UserError

__all__ = ["STRATEGIES", "apportion", "plan_mix", "sample_rows"]

STRATEGIES = ("under", "over")
_RATIO_SUM_TOLERANCE = 1e-6
_ROUNDING_SLACK = 1e-9  # absorbs float error in available/ratio before floor/ceil


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder method).

    Each part is the floor or the ceiling of its exact share, the parts sum to `total`, and a
    zero weight always gets 0. Ties go to the earlier weight.

    Args:
        total: the integer to split (>= 0).
        weights: non-negative weights with a positive sum; they need not sum to 1.

    Returns:
        One count per weight.

    Example:
        >>> apportion(10, [0.8, 0.1, 0.1])
        [8, 1, 1]
        >>> apportion(7, [1, 1, 1])
        [3, 2, 2]
    """
    scale = total / sum(weights)
    shares = [w * scale for w in weights]
    counts = [math.floor(s) for s in shares]
    # Only positive weights take leftover units, so float error can never feed a zero weight.
    # Remainders are rounded so float noise (2000.3999.. vs 333.4000..1) cannot break a tie.
    order = sorted((i for i, w in enumerate(weights) if w > 0),
                   key=lambda i: round(counts[i] - shares[i], 9))
    for step in range(total - sum(counts)):
        counts[order[step % len(order)]] += 1
    return counts


def plan_mix(available: Mapping[str, int], ratios: Mapping[str, float], strategy: str = "under",
             total: int | None = None) -> dict[str, int]:
    """Target row count per source, so the mixed data follows `ratios`.

    Args:
        available: rows each source has.
        ratios: target share of each source; they sum to 1, and every source with rows has one.
        strategy: "under" takes the largest total that needs no up-sampling (the scarcest
            source, relative to its ratio, is used in full); "over" takes the smallest total
            that needs no down-sampling (the most plentiful source is used in full).
        total: if given, exactly this many rows (up- or down-sampling as needed); overrides
            `strategy`.

    Returns:
        Target rows per source in `ratios`, summing to the total; 0 for a zero ratio.

    Raises:
        UserError: on a positive ratio for an unknown source or one with no rows, a source
            with rows but no ratio, a negative ratio, ratios not summing to 1, or an unknown
            strategy.

    Example:
        >>> plan_mix({"general": 1000, "domain": 300}, {"general": 0.4, "domain": 0.6})
        {'general': 200, 'domain': 300}
        >>> plan_mix({"general": 1000, "domain": 300}, {"general": 0.4, "domain": 0.6}, "over")
        {'general': 1000, 'domain': 1500}
    """
    _check_mix(available, ratios, strategy, total)
    weight_sum = sum(ratios.values())
    shares = {source: ratio / weight_sum for source, ratio in ratios.items()}
    if total is None:
        total = _strategy_total(available, shares, strategy)
    return dict(zip(shares, apportion(total, list(shares.values()))))


def _strategy_total(available: Mapping[str, int], shares: Mapping[str, float], strategy: str) -> int:
    # Rounding a share up can only reach an integer that the bound allows (see apportion), so
    # neither strategy ever asks a source for one row too many or too few.
    sizes = [available[source] / share for source, share in shares.items() if share > 0]
    if strategy == "under":
        return math.floor(min(sizes) + _ROUNDING_SLACK)
    return math.ceil(max(sizes) - _ROUNDING_SLACK)


def sample_rows(n_available: int, n_target: int, seed: int | str) -> list[int]:
    """Choose `n_target` row indices out of `range(n_available)`, deterministically.

    Down-sampling (`n_target <= n_available`) draws without replacement. Up-sampling takes
    every row as often as it fits whole (every row at least once), then a random subset of
    rows once more, so repeats are spread evenly. The order is not sorted.

    Args:
        n_available: rows in the source.
        n_target: rows wanted.
        seed: any int or str (for example "domain:42"); the same seed gives the same rows.

    Returns:
        `n_target` indices into the source.

    Raises:
        UserError: if rows are wanted from an empty source or either count is negative.

    Example:
        >>> sorted(sample_rows(3, 7, seed=0)).count(0) in (2, 3)
        True
    """
    if n_available < 0 or n_target < 0:
        raise UserError(f"cannot sample {n_target} rows from {n_available}",
                        hint="row counts must be >= 0")
    if n_target and not n_available:
        raise UserError(f"cannot sample {n_target} rows from a source with no rows",
                        hint="give that source a ratio of 0 or add rows to it")
    rng = random.Random(seed)
    if n_target <= n_available:
        return rng.sample(range(n_available), n_target)
    whole, rest = divmod(n_target, n_available)
    return list(range(n_available)) * whole + rng.sample(range(n_available), rest)


def _check_mix(available: Mapping[str, int], ratios: Mapping[str, float], strategy: str,
               total: int | None) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown mix strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")
    if total is not None and total < 0:
        raise UserError(f"mix total must be >= 0, got {total}", hint="give a row count or leave it out")
    for source, ratio in ratios.items():
        if ratio < 0:
            raise UserError(f"mix ratio for {source!r} is negative ({ratio:g})", hint="use a ratio >= 0")
        if ratio > 0 and available.get(source, 0) <= 0:
            # One message for a typo and for an empty source: either way no rows match the name.
            known = ", ".join(repr(s) for s, rows in available.items() if rows > 0) or "none"
            raise UserError(f"mix ratio {ratio:g} given for source {source!r}, which has no rows "
                            f"(sources with rows: {known})",
                            hint=f"correct the source name, or set the ratio of {source!r} to 0")
    missing = [source for source, rows in available.items() if rows > 0 and source not in ratios]
    if missing:
        names = ", ".join(repr(source) for source in missing)
        raise UserError(f"sources with rows but no mix ratio: {names}",
                        hint="give every source a ratio, or give none to keep all rows")
    ratio_sum = sum(ratios.values())
    if abs(ratio_sum - 1.0) > _RATIO_SUM_TOLERANCE:
        raise UserError(f"mix ratios sum to {ratio_sum:g}, not 1", hint="scale the ratios so they sum to 1")
