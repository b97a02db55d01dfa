"""Forgetting: how far fine-tuning moved the model on general conversations, as KL and perplexity.

For each general reference conversation, both models read the reference text (teacher forcing)
and at every assistant token we take KL(base || tuned) between their next-token distributions:
the expected extra surprise, in nats, of the tuned model at text the base model writes. 0 means
general behaviour is untouched. The positions are exactly the ones training scores (the loss
mask of `models.batch.encode_record`). Both perplexities come from the same logits (the
cross-entropy of each model at those positions, token-weighted as `eval.perplexity` weighs it),
so each model reads each batch of conversations once.

When the tuned model is a peft model over the base, pass `base_model=None`: the base side runs
inside `tuned_model.disable_adapter()`, so only one copy of the weights is in memory.

    >>> general_kl(None, peft_model, tok, get_template("chatml"), general_records)["mean_kl"]  # doctest: +SKIP
    0.0132
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.eval.generate import eval_mode
from domaintune.eval.perplexity import encode_for_eval, example_batches, per_example
from domaintune.models.codec import pad_id as codec_pad_id
from domaintune.models.templates import ChatTemplate
from domaintune.models.loss import supervised_logits


def _base_side(base_model: Any | None, tuned_model: Any) -> tuple[Any, AbstractContextManager]:
    if base_model is not None:
        return base_model, nullcontext()
    if not hasattr(tuned_model, "disable_adapter"):
        raise ValueError("base_model=None needs a peft model (with disable_adapter) as tuned_model")
    return tuned_model, tuned_model.disable_adapter()


def base_and_tuned_logits(base_model: Any | None, tuned_model: Any,
                          batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both models' next-token logits at the supervised positions of one batch, and the targets.

    Args:
        base_model: the base model, or None to use `tuned_model` with its adapter disabled.
        tuned_model: the fine-tuned model (a peft model when `base_model` is None).
        batch: a collated batch with `labels` (e.g. from `eval.perplexity.example_batches`).

    Returns:
        `(base_logits, tuned_logits, targets)`: `[N, vocab]` fp32 logits of each model (only the
        N supervised positions go through the LM head, as in training) and the `[N]` target ids.

    Raises:
        ValueError: `base_model` is None and `tuned_model` has no adapter to disable.

    Example:
        >>> base, tuned, targets = base_and_tuned_logits(None, peft_model, example_batch(peft_model, ex))  # doctest: +SKIP
    """
    model, disabled = _base_side(base_model, tuned_model)
    with disabled:
        base, targets, _ = supervised_logits(model, batch)
    tuned, _, _ = supervised_logits(tuned_model, batch)
    return base.float(), tuned.float(), targets


def kl_per_position(base_logits: torch.Tensor, tuned_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || tuned) in nats for each row of two `[N, vocab]` logit tensors.

    Example:
        >>> kl_per_position(torch.zeros(2, 5), torch.zeros(2, 5)).tolist()
        [0.0, 0.0]
    """
    base, tuned = F.log_softmax(base_logits, -1), F.log_softmax(tuned_logits, -1)
    kl = F.kl_div(tuned, base, log_target=True, reduction="none").sum(-1)
    return kl.clamp_min(0.0)  # KL >= 0; rounding can leave -1e-9 where the two are identical


def general_kl(base_model: Any | None, tuned_model: Any, tokenizer: Any, template: ChatTemplate,
               records: Sequence[Mapping[str, Any]], *, max_len: int = 512) -> dict[str, Any]:
    """Mean KL(base || tuned) over the assistant tokens of general conversations, and both perplexities.

    Args:
        base_model: the model before fine-tuning, or None (see `base_and_tuned_logits`).
        tuned_model: the model after fine-tuning.
        tokenizer: the shared tokenizer.
        template: the chat template training used.
        records: general reference records (chat or text).
        max_len: longer records are truncated to their first `max_len` tokens.

    Returns:
        `mean_kl` (nats per scored token, token-weighted; NaN with no scored token),
        `per_example_kl` (aligned with `records`, None where nothing is scored), `tokens`,
        `base_ppl` and `tuned_ppl`.

    Raises:
        ValueError: as in `base_and_tuned_logits`.

    Example:
        >>> out = general_kl(base, tuned, tok, tpl, general_records)   # doctest: +SKIP
        >>> out["tuned_ppl"] / out["base_ppl"]                          # doctest: +SKIP
        1.04
    """
    sums = _sums(base_model, tuned_model, tokenizer, template, records, max_len)
    total = sum(n for _, _, _, n in sums)

    def ppl(column: int) -> float:
        return math.exp(sum(row[column] for row in sums) / total) if total else float("nan")

    return {"mean_kl": sum(kl for kl, _, _, _ in sums) / total if total else float("nan"),
            "per_example_kl": [kl / n if n else None for kl, _, _, n in sums],
            "tokens": total, "base_ppl": ppl(1), "tuned_ppl": ppl(2)}


def _sums(base_model: Any | None, tuned_model: Any, tokenizer: Any, template: ChatTemplate,
          records: Sequence[Mapping[str, Any]], max_len: int) -> list[tuple[float, float, float, int]]:
    """Per record: summed KL, summed base NLL, summed tuned NLL and the number of scored tokens."""
    pad = codec_pad_id(tokenizer)
    examples = encode_for_eval(tokenizer, template, records, max_len)
    sums = [(0.0, 0.0, 0.0, 0)] * len(examples)
    with ExitStack() as stack, torch.inference_mode():
        for model in {id(m): m for m in (base_model, tuned_model) if m is not None}.values():
            stack.enter_context(eval_mode(model))
        for indices, batch in example_batches(tuned_model, examples, pad):
            base, tuned, targets = base_and_tuned_logits(base_model, tuned_model, batch)
            values = (kl_per_position(base, tuned), F.cross_entropy(base, targets, reduction="none"),
                      F.cross_entropy(tuned, targets, reduction="none"))
            parts = [per_example(v, [examples[j] for j in indices]) for v in values]
            for i, kl, nll_base, nll_tuned in zip(indices, *parts):
                sums[i] = (float(kl.sum()), float(nll_base.sum()), float(nll_tuned.sum()), kl.numel())
    return sums
