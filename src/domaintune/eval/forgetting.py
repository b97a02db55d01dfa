"""Forgetting: how far fine-tuning moved the model on general conversations, as KL and perplexity.

For each general reference conversation, both models read the reference text (teacher forcing)
and at every assistant token we take KL(base || tuned) between their next-token distributions:
the expected extra surprise, in nats, of the tuned model at text the base model writes. 0 means
general behaviour is untouched. The positions are exactly the ones training scores (the loss
mask of `train.collate.encode_record`); perplexities come from `eval.perplexity.perplexity`.

When the tuned model is a peft model over the base, pass `base_model=None`: the base side runs
inside `tuned_model.disable_adapter()`, so only one copy of the weights is in memory.

    >>> general_kl(None, peft_model, tok, get_template("chatml"), general_records)["mean_kl"]  # doctest: +SKIP
    0.0132
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.eval.generate import eval_mode
from domaintune.eval.perplexity import encode_for_eval, example_batch, perplexity
from domaintune.models.templates import ChatTemplate
from domaintune.train.collate import IGNORE_INDEX
from domaintune.train.loss import next_token_targets


def _base_side(base_model: Any | None, tuned_model: Any) -> tuple[Any, AbstractContextManager]:
    if base_model is not None:
        return base_model, nullcontext()
    if not hasattr(tuned_model, "disable_adapter"):
        raise ValueError("base_model=None needs a peft model (with disable_adapter) as tuned_model")
    return tuned_model, tuned_model.disable_adapter()


def _scored_logits(model: Any, batch: Mapping[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    # Prompt tuning prepends virtual positions: the text's positions are the last T.
    return logits[:, -keep.shape[1]:][keep].float()


def base_and_tuned_logits(base_model: Any | None, tuned_model: Any,
                          batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' next-token logits at the supervised positions of one batch.

    Args:
        base_model: the base model, or None to use `tuned_model` with its adapter disabled.
        tuned_model: the fine-tuned model (a peft model when `base_model` is None).
        batch: a collated batch with `labels` (e.g. `eval.perplexity.example_batch`).

    Returns:
        `(base_logits, tuned_logits)`, each `[N, vocab]` in fp32, N the supervised targets.

    Raises:
        ValueError: `base_model` is None and `tuned_model` has no adapter to disable.

    Example:
        >>> base, tuned = base_and_tuned_logits(None, peft_model, example_batch(peft_model, ex))  # doctest: +SKIP
    """
    keep = next_token_targets(batch["labels"]) != IGNORE_INDEX
    model, disabled = _base_side(base_model, tuned_model)
    with disabled:
        base = _scored_logits(model, batch, keep)
    return base, _scored_logits(tuned_model, batch, keep)


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
    sums, counts = _kl_sums(base_model, tuned_model, tokenizer, template, records, max_len)
    total = sum(counts)
    model, disabled = _base_side(base_model, tuned_model)
    with disabled:
        base_ppl = perplexity(model, tokenizer, template, records, max_len=max_len)["ppl"]
    tuned_ppl = perplexity(tuned_model, tokenizer, template, records, max_len=max_len)["ppl"]
    return {"mean_kl": sum(sums) / total if total else float("nan"),
            "per_example_kl": [s / n if n else None for s, n in zip(sums, counts)],
            "tokens": total, "base_ppl": base_ppl, "tuned_ppl": tuned_ppl}


def _kl_sums(base_model: Any | None, tuned_model: Any, tokenizer: Any, template: ChatTemplate,
             records: Sequence[Mapping[str, Any]], max_len: int) -> tuple[list[float], list[int]]:
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    sums, counts = [], []
    with ExitStack() as stack, torch.inference_mode():
        for model in {id(m): m for m in (base_model, tuned_model) if m is not None}.values():
            stack.enter_context(eval_mode(model))
        for ex in encode_for_eval(tokenizer, template, records, max_len):
            if ex is None:
                sums.append(0.0)
                counts.append(0)
                continue
            kl = kl_per_position(*base_and_tuned_logits(base_model, tuned_model, example_batch(tuned_model, ex, pad)))
            sums.append(float(kl.sum()))
            counts.append(int(kl.numel()))
    return sums, counts
