"""One optimizer step's arithmetic: the LR schedule, gradient accumulation, NEFTune noise, the validation loss.

    loss_sum, supervised, tokens = accumulate_gradients(model, batches)          # plain CE
    loss_sum, supervised, tokens = accumulate_gradients(model, batches, loss_fn=kd_loss)  # distillation
    val = validation_loss(model, val_batches)                                     # always plain CE

A loss function takes `(model, batch)` and returns `(mean loss tensor, supervised token count)`,
exactly as `models.loss.causal_lm_loss` does; accumulation weights each micro-batch by its count,
so any such loss accumulates like one big batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from domaintune.models.loss import causal_lm_loss, token_counts, validation_terms
from domaintune.train.sharding import sync_gradients

LossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """LR multiplier at 0-based `step`: linear warm-up, then cosine, linear or constant decay.

    Warm-up rises as (step+1)/(warmup+1), so no step runs at LR 0; decay ends just above 0 at the
    last step.

    Example:
        >>> [lr_factor(s, 0, 4, "linear") for s in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress if kind == "linear" else 1.0


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fp32 master weights); nothing on CPU, which trains in fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulate_gradients(model: Any, batches: Sequence[dict[str, torch.Tensor]], start: int = 0,
                         after_micro: Callable[[int, float], None] | None = None,
                         loss_fn: LossFn = causal_lm_loss,
                         totals: tuple[int, int] | None = None) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches, adding into `.grad`.

    Each micro-batch's mean loss is weighted by `n_i / N` (N: supervised tokens of the whole
    step), so the accumulated gradient is `grad(sum of token losses) / N`, exactly one big batch.

    Args:
        model: the model, in train mode.
        batches: every micro-batch of the step (counts are taken over all of them).
        start: micro-batches already accumulated (a resume mid-step); they are not run again.
        after_micro: called with (micro-batches done, loss sum so far) after each backward.
        loss_fn: `(model, batch) -> (mean loss, supervised tokens)`; `causal_lm_loss` by default,
            a distillation loss for `method: distill`.
        totals: `(supervised, tokens)` of the whole step when `batches` is only this process's
            share of it (`distributed.step_totals`); None: counted over `batches`.

    Returns:
        `(loss_sum, supervised, tokens)`: summed token losses of the micro-batches run, and the
        supervised and total token counts of the whole step.

    Example:
        >>> loss_sum, n, _ = accumulate_gradients(model, [collate_packed(examples)])  # doctest: +SKIP
        >>> optimizer.step()                                                          # doctest: +SKIP
    """
    if totals is None:
        counts = [token_counts(b) for b in batches]
        totals = sum(n for _, n in counts), sum(t for t, _ in counts)
    supervised, tokens = totals
    device = next(model.parameters()).device
    loss_sum = 0.0
    for i in range(start, len(batches)):
        with autocast(device):
            loss, n = loss_fn(model, to_device(batches[i], device))
        sync_gradients(model, last=i == len(batches) - 1)  # several processes: reduce once per step
        (loss * (n / supervised)).backward()
        loss_sum += loss.item() * n
        if after_micro is not None:
            after_micro(i + 1, loss_sum)
    return loss_sum, supervised, tokens


def validation_loss(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """Token-weighted mean of the plain `causal_lm_loss` over `batches`, in eval mode.

    Returns:
        The loss, or None when the batches hold no supervised token.
    """
    total, count, _, _ = validation_sums(model, batches)
    return total / count if count else None


@torch.no_grad()
def validation_sums(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> tuple[float, int, int, int]:
    """`(summed token losses, supervised tokens, examples answered right, examples)` over `batches`,
    in eval mode: the plain loss (`models.loss.validation_terms`, no closed-set term) and, for
    examples marked with closed-set decisions, whether greedy decoding in the set gets them right."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = [0.0, 0, 0, 0]
    for batch in batches:
        with autocast(device):
            terms = validation_terms(model, to_device(batch, device))
        sums = [a + b for a, b in zip(sums, terms, strict=True)]
    model.train(was_training)
    return sums[0], int(sums[1]), int(sums[2]), int(sums[3])


@contextlib.contextmanager
def neftune(model: Any, alpha: float | None):
    """NEFTune noise on the input embeddings in train mode only (transformers' own hook)."""
    if not alpha:
        yield
        return
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    # Uniform(-1, 1) * alpha / sqrt(L * d) with L the row length, so for a packed row L is the
    # row's, as with TRL's padding-free batches.
    handle = activate_neftune(model, alpha)
    try:
        yield
    finally:
        deactivate_neftune(model, handle)
