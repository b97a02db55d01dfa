"""The search space of `domaintune tune`: what a trial may change in the recipe's train section.

Learning rate (log scale), passes over the data, LoRA rank and alpha (as a multiple of the rank)
and the packed tokens per micro-batch: the knobs the fine-tuning guides our users follow ask to
search. Trial 0 is the recipe's own values in these terms (`baseline_params`: its learning rate,
rank, alpha and batch, and the epochs its `epochs` setting resolves to), so the search starts
from the defaults.

    params = suggest(trial, recipe.train)          # {"learning_rate": 6e-4, "epochs": 4, ...}
    overrides = to_overrides(params)                # ["train.learning_rate=0.0006", ...]
"""

from __future__ import annotations

from typing import Any

LR_RANGE = (1e-4, 3e-3)
EPOCHS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
RANKS = (4, 8, 16, 32)
ALPHA_RATIOS = (1.0, 2.0)
BATCH_TOKENS = (512, 1024, 2048)


def lora_like(train: Any) -> bool:
    """Whether the recipe's method has a rank and alpha to search (LoRA, QLoRA)."""
    return hasattr(train.method, "r") and hasattr(train.method, "alpha")


def baseline_params(train: Any, epochs: float) -> dict[str, Any]:
    """The recipe's own values in the space's terms (`epochs`: what "auto" resolves to)."""
    params = {"learning_rate": train.learning_rate, "epochs": float(epochs), "batch_tokens": train.batch_tokens}
    if lora_like(train):
        params.update(r=train.method.r, alpha_ratio=float(train.method.alpha) / train.method.r)
    return params


def suggest(trial: Any, train: Any, baseline: dict[str, Any]) -> dict[str, Any]:
    """Draw one trial's values from the space (whose choices include the baseline's own values)."""
    def choice(name: str, values: tuple) -> Any:
        return trial.suggest_categorical(name, tuple(sorted({*values, baseline[name]})))

    low, high = min(LR_RANGE[0], baseline["learning_rate"]), max(LR_RANGE[1], baseline["learning_rate"])
    params = {"learning_rate": trial.suggest_float("learning_rate", low, high, log=True),
              "epochs": choice("epochs", EPOCHS), "batch_tokens": choice("batch_tokens", BATCH_TOKENS)}
    if lora_like(train):
        params.update(r=choice("r", RANKS), alpha_ratio=choice("alpha_ratio", ALPHA_RATIOS))
    return params


def to_overrides(params: dict[str, Any]) -> list[str]:
    """`--set` style overrides of the train section for a trial's values."""
    out = [f"train.learning_rate={params['learning_rate']:.6g}", f"train.epochs={params['epochs']:g}",
           f"train.batch_tokens={params['batch_tokens']}", "train.max_steps=null"]
    if "r" in params:
        out += [f"train.method.r={params['r']}", f"train.method.alpha={params['r'] * params['alpha_ratio']:g}"]
    return out
