"""Training examples: prepared records become token ids plus labels, then padding-free batches.

A record becomes an `Example` once (`encode_record`): chat records through the model's
`ChatTemplate` (loss on assistant answers and their end-of-turn tokens only), text records as
plain tokens plus EOS, all trained. Labels are -100 (`IGNORE_INDEX`) wherever no loss is taken,
and always at position 0, which no token predicts.

Batches come in two shapes:

* packed (`pack_examples` + `collate_packed`): several examples laid end to end in one row
  `[1, T]` with `position_ids` restarting at 0 for each and NO `attention_mask`. transformers 5.x
  reads the restarts (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal
  causal mask for sdpa, eager and flex attention; flash-attention turns the same restarts into
  varlen boundaries (batch size 1 only, as here). Detection is skipped when an `attention_mask`
  or a KV cache is present, so the forward MUST run with `use_cache=False`: the config default,
  True, creates an empty DynamicCache and silently lets conversations attend to each other
  (measured on tiny LLaMA/Qwen2/DeepSeek-V3). `domaintune.train.loss.causal_lm_loss` does this.
* padded (`collate_padded`): right-padded rows with an `attention_mask`, for when packing is off
  and for prefix/prompt tuning, whose virtual tokens break packed-sequence detection.

`length_grouped_order` orders examples so padded batches hold similar lengths.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from domaintune.errors import UserError
from domaintune.models.templates import ChatTemplate

IGNORE_INDEX = -100
TRUNCATIONS = ("drop", "truncate")
# Reasons `encode_record` gives for skipping a record; the caller counts them for the report.
SKIP_TOO_LONG = "too_long"
SKIP_NO_TRAINED_TOKENS = "no_trained_tokens"
# HF's LengthGroupedSampler sorts inside megabatches of 50 batches.
MEGABATCH_MULT = 50


@dataclass(frozen=True)
class Example:
    """One training example.

    Attributes:
        input_ids: token ids.
        labels: the same ids where the loss is taken, `IGNORE_INDEX` elsewhere (always at 0).
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class Encoded(NamedTuple):
    """What `encode_record` returns: an example, or None and the reason it was skipped."""

    example: Example | None
    reason: str | None = None


def encode_record(record: Mapping[str, Any], tokenizer: Any, template: ChatTemplate, max_len: int,
                  truncation: str = "drop", train_on_prompt: bool = False,
                  keep_reasoning: bool = True) -> Encoded:
    """Tokenize one prepared record and mark the tokens the loss is computed on.

    Args:
        record: a canonical record, `{"messages": [...]}` or `{"text": ...}` (plus "metadata").
        tokenizer: a fast Hugging Face tokenizer.
        template: the model's chat template (used for chat records).
        max_len: the most tokens an example may have.
        truncation: "drop" skips a longer record; "truncate" keeps its first `max_len` tokens.
        train_on_prompt: train on prompt tokens too (chat records).
        keep_reasoning: keep the final answer's reasoning block (see `ChatTemplate.encode`).

    Returns:
        `Encoded(example, None)`, or `Encoded(None, reason)` with reason `SKIP_TOO_LONG` or
        `SKIP_NO_TRAINED_TOKENS` (nothing left to learn, e.g. the answer was truncated away).

    Raises:
        UserError: an unknown `truncation`, or a record with neither "messages" nor "text".

    Example:
        >>> enc = encode_record({"text": "hello"}, tok, get_template("chatml"), 512)  # doctest: +SKIP
        >>> enc.example.labels[0]                                                    # doctest: +SKIP
        -100
    """
    if truncation not in TRUNCATIONS:
        raise UserError(f"unknown truncation '{truncation}'", hint=f"use one of: {', '.join(TRUNCATIONS)}")
    ids, trained = _tokenize(record, tokenizer, template, train_on_prompt, keep_reasoning)
    if len(ids) > max_len:
        if truncation == "drop":
            return Encoded(None, SKIP_TOO_LONG)
        ids, trained = ids[:max_len], trained[:max_len]
    # Position 0 has no context to be predicted from; dropping it here keeps counts honest.
    labels = [IGNORE_INDEX] + [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], trained[1:])]
    if all(label == IGNORE_INDEX for label in labels):
        return Encoded(None, SKIP_NO_TRAINED_TOKENS)
    return Encoded(Example(ids, labels))


def _tokenize(record: Mapping[str, Any], tokenizer: Any, template: ChatTemplate, train_on_prompt: bool,
              keep_reasoning: bool) -> tuple[list[int], list[bool]]:
    if "messages" in record:
        return template.encode(record["messages"], tokenizer, train_on_prompt=train_on_prompt,
                               keep_reasoning=keep_reasoning)
    if "text" in record:
        ids = list(tokenizer(record["text"], add_special_tokens=False)["input_ids"])
        eos = getattr(tokenizer, "eos_token_id", None)
        ids += [eos] if eos is not None else []
        return ids, [True] * len(ids)
    raise UserError("a prepared record has neither 'messages' nor 'text'",
                    hint="train on the output of `domaintune prepare`")


def pack_examples(examples: Sequence[Example], max_tokens: int) -> list[list[int]]:
    """Group example indices into rows of at most `max_tokens` tokens (best-fit decreasing).

    Longest first, each example goes into the open row it fills most tightly, else a new row:
    the classic bin-packing heuristic (never more than 11/9 of the optimal row count, plus one),
    in O(n log n). Ties break by index and row age, so the result is deterministic.

    Args:
        examples: the examples (only their lengths are used).
        max_tokens: the most tokens one row may hold.

    Returns:
        Rows of example indices; every index appears exactly once, rows in creation order,
        indices within a row in the order they were placed.

    Raises:
        ValueError: an example is longer than `max_tokens` (encode with that limit first).
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    if order and len(examples[order[0]]) > max_tokens:
        raise ValueError(f"example {order[0]} has {len(examples[order[0]])} tokens, more than "
                         f"max_tokens={max_tokens}")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row) sorted, so bisect finds the tightest fit
    for i in order:
        need = len(examples[i])
        at = bisect_left(free, (need, -1))
        if at == len(free):
            rows.append([i])
            row, room = len(rows) - 1, max_tokens - need
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= need
        if room > 0:
            insort(free, (room, row))
    return rows


def collate_packed(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Lay examples end to end in one padding-free row.

    Args:
        examples: the examples of one row (e.g. one list from `pack_examples`).

    Returns:
        `input_ids`, `labels` and `position_ids`, each `[1, T]` with T the total length.
        `position_ids` restart at 0 for each example, which is how the model keeps them apart;
        there is deliberately no `attention_mask` (it would switch that detection off). Each
        example's first label is `IGNORE_INDEX`, so no token is ever predicted across a border.
    """
    ids = [t for ex in examples for t in ex.input_ids]
    labels = [lab for ex in examples for lab in [IGNORE_INDEX, *ex.labels[1:]]]
    positions = [p for ex in examples for p in range(len(ex))]
    return {"input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long)}


def collate_padded(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch.

    Args:
        examples: the examples of one batch.
        pad_id: the id written into padding (never attended to, never trained).

    Returns:
        `input_ids`, `labels` and `attention_mask`, each `[B, max length]`; labels are
        `IGNORE_INDEX` on padding.
    """
    width = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        labels[row, 0] = IGNORE_INDEX
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Shuffle indices, then sort by length inside megabatches, as HF's LengthGroupedSampler does.

    Consecutive runs of `batch_size` indices then hold similar lengths (little padding), while the
    order across megabatches stays random. The longest example comes first, so a run that would
    run out of memory does so at step one.

    Args:
        lengths: the length of each example.
        batch_size: examples per batch; megabatches hold `50 * batch_size`.
        seed: the shuffle seed; the same seed gives the same order.

    Returns:
        A permutation of `range(len(lengths))`.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    size = max(1, MEGABATCH_MULT * batch_size)
    grouped = [i for start in range(0, len(order), size)
               for i in sorted(order[start:start + size], key=lambda i: -lengths[i])]
    if grouped:
        longest = max(range(len(grouped)), key=lambda k: lengths[grouped[k]])
        grouped[0], grouped[longest] = grouped[longest], grouped[0]
    return grouped
