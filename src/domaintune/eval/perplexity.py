"""Perplexity on assistant tokens, per example and overall, through the training loss itself.

Each record is encoded by `train.collate.encode_record` (the one copy of the loss mask: answers
and their end-of-turn tokens) and scored by `train.loss.causal_lm_loss` (the one copy of the
loss), one example per forward: `causal_lm_loss` returns one mean per batch, and paired tests
need each example's own value. The overall figure is token-weighted: the mean NLL over every
scored token of every example, `ppl = exp(mean_nll)`, which is what validation loss reports.

    >>> perplexity(model, tok, get_template("chatml"), load_split("prepared/test.jsonl"))["ppl"]  # doctest: +SKIP
    7.41
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from domaintune.eval.generate import eval_mode
from domaintune.models.templates import ChatTemplate
from domaintune.train.collate import Example, collate_packed, collate_padded, encode_record
from domaintune.train.loss import causal_lm_loss, packing_supported


def encode_for_eval(tokenizer: Any, template: ChatTemplate, records: Sequence[Mapping[str, Any]],
                    max_len: int) -> list[Example | None]:
    """Encode records as training does, truncating long ones; None where nothing is left to score.

    Example:
        >>> encode_for_eval(tok, get_template("chatml"), records, 512)[0].labels[0]   # doctest: +SKIP
        -100
    """
    return [encode_record(r, tokenizer, template, max_len, truncation="truncate").example for r in records]


def example_batch(model: Any, example: Example, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """One example as a batch `causal_lm_loss` takes (padded form for prompt/prefix tuning)."""
    return collate_packed([example]) if packing_supported(model) else collate_padded([example], pad_id)


def perplexity(model: Any, tokenizer: Any, template: ChatTemplate, records: Sequence[Mapping[str, Any]], *,
               max_len: int = 1024) -> dict[str, Any]:
    """Perplexity of `model` on the assistant tokens of `records`.

    Args:
        model: a causal LM or a peft model around one (put in eval mode for the call).
        tokenizer: its fast tokenizer.
        template: the chat template training used.
        records: prepared records (chat or text).
        max_len: longer records are truncated to their first `max_len` tokens.

    Returns:
        `ppl` (exp of `mean_nll`), `mean_nll` (nats per scored token, token-weighted), `tokens`
        (scored tokens), `per_example_nll` and `per_example_tokens` (aligned with `records`; None
        and 0 for a record with nothing left to score, e.g. its answer was truncated away) and
        `skipped` (how many such records). With no scored token at all, ppl and mean_nll are NaN.

    Example:
        >>> out = perplexity(model, tok, tpl, records, max_len=512)   # doctest: +SKIP
        >>> out["tokens"], round(out["ppl"], 2)                        # doctest: +SKIP
        (1830, 7.41)
    """
    examples = encode_for_eval(tokenizer, template, records, max_len)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    nll: list[float | None] = []
    counts: list[int] = []
    with eval_mode(model), torch.inference_mode():
        for ex in examples:
            loss, count = causal_lm_loss(model, example_batch(model, ex, pad)) if ex is not None else (None, 0)
            nll.append(float(loss) if loss is not None else None)
            counts.append(count)
    total = sum(counts)
    mean = sum(v * n for v, n in zip(nll, counts) if v is not None) / total if total else float("nan")
    return {"ppl": math.exp(mean) if total else float("nan"), "mean_nll": mean, "tokens": total,
            "per_example_nll": nll, "per_example_tokens": counts, "skipped": nll.count(None)}
