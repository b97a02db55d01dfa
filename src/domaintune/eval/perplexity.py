"""Perplexity on assistant tokens, per example and overall, through the training loss itself.

Each record is encoded by `models.batch.encode_record` (the one copy of the loss mask: answers
and their end-of-turn tokens) and scored through `models.loss.supervised_logits` (the logits the
training loss is taken on, projected only at supervised positions). Whole examples are grouped
into batches of about `BATCH_TOKENS` tokens: packed rows (positions restart per example, as in
training) or, for prompt/prefix tuning, padded batches; each example's targets are a contiguous
run of the row-major scored positions, so per-example values (which paired tests need) are
slices of one batch. The overall figure is token-weighted: the mean NLL over every scored token
of every example, `ppl = exp(mean_nll)`, which is what validation loss reports.

    >>> perplexity(model, tok, get_template("chatml"), load_split("prepared/test.jsonl"))["ppl"]  # doctest: +SKIP
    7.41
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.eval.generate import eval_mode
from domaintune.models.codec import pad_id as codec_pad_id
from domaintune.models.templates import ChatTemplate
from domaintune.models.batch import IGNORE_INDEX, Example, collate_packed, collate_padded, encode_record
from domaintune.models.loss import packing_supported, supervised_logits

# Tokens per scoring batch (whole examples; a longer one goes alone). Attention over a packed row
# costs its length squared however it is masked: on the demo's test split (14k tokens) 2,048-token
# rows took 45 s, 512-token rows 30 s, 128-token rows 36 s (per-call overhead).
BATCH_TOKENS = 512


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


def scored_targets(example: Example) -> int:
    """How many next-token targets an example contributes in a packed or padded batch.

    Its first label is never a target (in a packed row it would be predicted across the border
    from the previous example), so these are its labels after the first that are trained.
    """
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def example_batches(model: Any, examples: Sequence[Example | None], pad_id: int = 0,
                    max_tokens: int | None = None) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Group whole examples (None skipped) into batches of at most `max_tokens` tokens.

    Args:
        model: decides the layout: packed rows when it keeps packed conversations apart
            (`models.loss.packing_supported`), padded batches otherwise.
        examples: encoded examples, e.g. from `encode_for_eval`.
        pad_id: padding id for padded batches.
        max_tokens: the token budget of a batch (padded: rows x longest row; default
            `BATCH_TOKENS`); an example longer than the budget forms a batch of its own.

    Yields:
        `(indices, batch)`: the positions in `examples` of the batch's examples, in order, and
        the collated batch.
    """
    packed, budget = packing_supported(model), max_tokens or BATCH_TOKENS
    group: list[int] = []
    for i, ex in enumerate(examples):
        if ex is None:
            continue
        size = sum(len(examples[j]) for j in group) + len(ex) if packed else \
            (len(group) + 1) * max([len(ex), *(len(examples[j]) for j in group)])
        if group and size > budget:
            yield group, _collate([examples[j] for j in group], packed, pad_id)
            group = []
        group.append(i)
    if group:
        yield group, _collate([examples[j] for j in group], packed, pad_id)


def _collate(examples: list[Example], packed: bool, pad_id: int) -> dict[str, torch.Tensor]:
    return collate_packed(examples) if packed else collate_padded(examples, pad_id)


def per_example(values: torch.Tensor, examples: Sequence[Example]) -> list[torch.Tensor]:
    """Split `[N]` per-target values of one batch (row-major) into each example's slice."""
    return list(values.split([scored_targets(ex) for ex in examples]))


def perplexity(model: Any, tokenizer: Any, template: ChatTemplate, records: Sequence[Mapping[str, Any]], *,
               max_len: int = 1024, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Perplexity of `model` on the assistant tokens of `records`.

    Args:
        model: a causal LM or a peft model around one (put in eval mode for the call).
        tokenizer: its fast tokenizer.
        template: the chat template training used.
        records: prepared records (chat or text).
        max_len: longer records are truncated to their first `max_len` tokens.
        progress: called with the number of records each scored batch held.

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
    pad = codec_pad_id(tokenizer)
    nll: list[float | None] = [None] * len(examples)
    counts = [0] * len(examples)
    with eval_mode(model), torch.inference_mode():
        for indices, batch in example_batches(model, examples, pad):
            logits, targets, _ = supervised_logits(model, batch)
            ce = F.cross_entropy(logits.float(), targets, reduction="none")
            for i, part in zip(indices, per_example(ce, [examples[j] for j in indices])):
                nll[i], counts[i] = (float(part.mean()), part.numel()) if part.numel() else (None, 0)
            if progress is not None:
                progress(len(indices))
    total = sum(counts)
    mean = sum(v * n for v, n in zip(nll, counts) if v is not None) / total if total else float("nan")
    return {"ppl": math.exp(mean) if total else float("nan"), "mean_nll": mean, "tokens": total,
            "per_example_nll": nll, "per_example_tokens": counts, "skipped": nll.count(None)}
