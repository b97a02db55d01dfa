"""What a validation measures and what counts as better: checkpoint selection and early stopping.

Validation always measures the loss on the validation split. With `train.select_by` set to a
task metric (accuracy, macro-F1, exact match, chrF), a `TaskMetric` given by the caller also
decodes a sample of validation rows the way `eval` does and scores them; that metric then picks
the best checkpoint and drives early stopping (`early_stopping_patience` validations without a
new best end the run). The training layer only calls the function: decoding and scoring belong
to eval, and `api.train` builds it (`eval/validation.py`).

    selector = Selector("accuracy")
    selector.better(71.0, 70.5)   # True: higher is better for every metric but the loss
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOSS = "loss"
TaskMetric = Callable[[Any], dict[str, float]]  # model -> {"accuracy": 71.0, ...} on decoded validation rows


@dataclass(frozen=True)
class Selector:
    """The metric a run selects by and its direction."""

    metric: str = LOSS

    @property
    def key(self) -> str:
        """The name the metric has in metrics.jsonl ("val_loss" or "val_<metric>")."""
        return f"val_{self.metric}"

    def better(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (None: nothing yet); lower is better only for the loss."""
        if best is None:
            return True
        return value < best if self.metric == LOSS else value > best


def resolve_select_by(select_by: str, closed_set: bool) -> str:
    """`train.select_by` as a metric name: "auto" is accuracy on a closed answer set, else the loss."""
    if select_by != "auto":
        return select_by
    return "accuracy" if closed_set else LOSS
