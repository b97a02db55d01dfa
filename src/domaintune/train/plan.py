"""How long a run trains: `train.epochs: auto`, the time budget, and the plan printed before step 1.

`epochs: auto` follows from the data: a run sees about `AUTO_EXAMPLES` training examples, with at
least one pass and at most `AUTO_MAX_EPOCHS` passes. A small labelled set (a few hundred rows)
gets many passes, a large corpus one; early stopping on validation ends a run that stops
improving. docs/quality.md holds the measurements behind the two numbers.

`train.time_budget` caps the wall time of the training loop (validation included). Once a few
steps have run, the measured seconds per step (plus the validations to come) give the steps that
fit; the schedule is shortened to them once, so the learning rate still decays to its end, and
the new total is kept in the checkpoint so a resume continues the same schedule. A run that still
runs out of time (a slow validation, a busy machine) stops at the next step with the reason
"time_budget" and keeps its best checkpoint.

    >>> auto_epochs(500), auto_epochs(4000), auto_epochs(100000)
    (8.0, 1.5, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AUTO_EXAMPLES = 6000
AUTO_MAX_EPOCHS = 8.0
REPLAN_AFTER_STEPS = 2  # steps measured before the schedule is fitted to the time budget
STEP_SHARE_OF_BUDGET = 0.8  # of a time budget, what is left for steps once validations are paid
BACKWARD_COST = 3.1  # a trained layer's backward, in forward passes of that layer (cache_build_cap)
STEP_OVERHEAD = 6.0  # a step's cost that does not scale with the layers, in layer forwards
CACHE_MIN_GAIN = 1.1  # the frozen-layer cache must fit this many times the steps under a time budget


def auto_epochs(n_examples: int) -> float:
    """Passes over `n_examples` training examples for `epochs: auto` (see the module docstring)."""
    if n_examples <= 0:
        return 1.0
    return round(min(AUTO_MAX_EPOCHS, max(1.0, AUTO_EXAMPLES / n_examples)), 2)


def resolve_epochs(epochs: float | str, n_examples: int) -> float:
    """`train.epochs` as a number: itself, or `auto_epochs` for "auto"."""
    return auto_epochs(n_examples) if epochs == "auto" else float(epochs)


@dataclass(frozen=True)
class Plan:
    """What a run is about to do, for the line printed before its first step."""

    rows: int
    tokens: int
    epochs: float
    steps: int
    source: str  # what set the length: "auto", "epochs" or "max_steps"
    budget_s: float | None = None

    def describe(self, seconds_per_step: float | None = None) -> str:
        """One line: rows, tokens, epochs, steps, the estimated minutes and the budget."""
        text = (f"plan: {self.rows:,} rows ({self.tokens:,} tokens) x {self.epochs:g} epochs ({self.source}) = "
                f"{self.steps:,} steps")
        if seconds_per_step:
            text += f"; estimated {self.steps * seconds_per_step / 60:.1f} min"
        if self.budget_s:
            text += f"; time budget {self.budget_s / 60:.1f} min"
        return text


def steps_within_budget(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float,
                        seconds_per_validation: float, eval_every: int, total: int) -> int:
    """The total steps that fit in the budget, at most `total` and at least one more than `step`.

    Args:
        budget_s: the wall-time budget of the loop.
        elapsed_s: seconds spent so far (the step-0 validation included).
        step: steps done.
        seconds_per_step: measured training seconds per optimizer step.
        seconds_per_validation: measured seconds of one validation (0 without validation).
        eval_every: steps between validations.
        total: the planned total steps.

    Example:
        >>> steps_within_budget(100, 10, 2, 5.0, 0.0, 50, 400)
        20
    """
    left = budget_s - elapsed_s
    every = max(1, eval_every)
    fits = 0
    for more in range(1, total - step + 1):  # validations: each multiple of `every` passed, and the last step
        end = step + more
        validations = end // every - step // every + (1 if end % every else 0)
        if more * seconds_per_step + validations * seconds_per_validation > left:
            break
        fits = more
    return max(step + 1, step + fits)


def cache_build_cap(budget_s: float, cut: int, n_layers: int) -> float:
    """The longest frozen-layer cache build that still leaves `CACHE_MIN_GAIN` more training steps.

    A step's cost, in forward passes of one decoder layer: every layer it runs forward (1 each),
    the trained layers' backward (`BACKWARD_COST` each) and what does not scale with the layers
    (LM head on the answer positions, optimizer; `STEP_OVERHEAD`). Without the cache all
    `n_layers` run forward, with it only the `n_layers - cut` trained ones: a cached step costs
    `r` of an uncached one. Over the step time `T` (`STEP_SHARE_OF_BUDGET` of the budget) the
    cache gives `CACHE_MIN_GAIN` times the steps when `(T - build) / r >= CACHE_MIN_GAIN * T`.
    The constants were fitted to SmolLM2-135M LoRA steps on 2 CPU cores (6.07 s a step uncached
    with the top 10 of 30 layers trained, 4.26 s cached; 2.03 s cached with the top 4).

    Example:
        >>> round(cache_build_cap(240, 20, 30)), round(cache_build_cap(240, 26, 30))
        (44, 94)
    """
    top = n_layers - cut
    ratio = (top * (1 + BACKWARD_COST) + STEP_OVERHEAD) / (n_layers + top * BACKWARD_COST + STEP_OVERHEAD)
    return max(0.0, (1 - CACHE_MIN_GAIN * ratio) * STEP_SHARE_OF_BUDGET * budget_s)
