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
  (measured on tiny LLaMA/Qwen2/DeepSeek-V3). `domaintune.models.loss.causal_lm_loss` does this.
* padded (`collate_padded`): right-padded rows with an `attention_mask`, for when packing is off
  and for prefix/prompt tuning, whose virtual tokens break packed-sequence detection.

`length_grouped_order` orders examples so padded batches hold similar lengths.

Term-aware training: with a `TermWeighter`, `encode_record` gives every trained token that
overlaps a domain term (from the terminology dictionary) a loss weight above 1, and both collate
functions then add a `loss_weights` tensor that `models.loss.causal_lm_loss` turns into a
weighted mean.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from domaintune.data.terms import TermDict
from domaintune.errors import UserError
# The private helpers are ChatTemplate.encode's own steps: the weighted path needs the offsets
# that `encode` computes and drops (tests/unit/train/test_collate.py checks both paths agree).
from domaintune.models.templates import ChatTemplate, _mask_from_offsets, _tokenize_with_offsets, _trained_spans

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
        weights: per-token loss weights aligned with `labels` (term-aware training), or None
            for all 1. Values at untrained positions are never used.
        choices: closed-set decisions (`train/closed_set.py`): `(label position, allowed ids)`
            where the answer set branches, or None.
    """

    input_ids: list[int]
    labels: list[int]
    weights: tuple[float, ...] | None = None
    choices: tuple[tuple[int, tuple[int, ...]], ...] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


class Encoded(NamedTuple):
    """What `encode_record` returns: an example, or None and the reason it was skipped."""

    example: Example | None
    reason: str | None = None


class TermWeighter:
    """Loss weights that make the tokens of domain terms count more.

    Terms match as in `domaintune.data.terms` (the dictionary `prepare` normalizes with):
    case-insensitive, terms starting or ending with an ASCII letter or digit on ASCII word
    boundaries, Chinese terms anywhere. Every listed form counts, canonical or variant.

    Args:
        terms: the term strings, or a loaded `TermDict` (all its forms are used).
        weight: the loss weight of a trained token that overlaps a term (> 0; 1 changes nothing).

    Raises:
        UserError: `weight` is not a positive number, or a term is empty.

    Example:
        >>> w = TermWeighter(["heart attack", "心梗"], 3.0)
        >>> w.token_weights("A heart attack.", [(0, 1), (1, 7), (7, 14), (14, 15)], [True] * 4)
        (1.0, 3.0, 3.0, 1.0)
    """

    def __init__(self, terms: Iterable[str] | TermDict, weight: float) -> None:
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise UserError(f"term weight must be a positive number, got {weight!r}",
                            hint="use e.g. 2.0 (1.0 weighs terms like any other token)")
        self.weight = float(weight)
        if isinstance(terms, TermDict):
            self._dict = terms
        else:  # each string its own canonical term; TermDict refuses case-only duplicates
            self._dict = TermDict.from_mapping({t: () for t in {t.strip().lower(): t for t in terms}.values()})

    @classmethod
    def from_file(cls, path: str | Path, weight: float) -> TermWeighter:
        """A weighter for every form (canonical and variant) in a term dictionary file.

        Args:
            path: a `.csv` or `.yaml` terminology file, as `TermDict.from_file` reads it.
            weight: as in the constructor.

        Raises:
            UserError: the file is missing or malformed, or `weight` is not positive.
        """
        return cls(TermDict.from_file(str(path)), weight)

    def term_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of every term occurrence in `text` (overlaps included)."""
        lowered = text.lower()
        if len(lowered) != len(text):  # "İ".lower() is two characters; keep offsets aligned
            lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
        # TermDict has no public span finder; these are the two steps its `normalize` runs.
        found = self._dict._anchors_in(lowered)  # noqa: SLF001
        return sorted(span for anchor in found for span in self._dict._spans(anchor, lowered))  # noqa: SLF001

    def token_weights(self, text: str, offsets: Sequence[Sequence[int]],
                      trained: Sequence[bool]) -> tuple[float, ...] | None:
        """Per-token weights: `weight` for trained tokens overlapping a term, 1.0 otherwise.

        Args:
            text: the rendered text the tokens come from.
            offsets: each token's `(start, end)` character span in `text` (non-decreasing).
            trained: whether each token is trained.

        Returns:
            One weight per token, or None when no trained token touches a term (the same as
            all 1, and batches without weights take the cheaper unweighted loss).
        """
        spans = self.term_spans(text)
        if not spans:
            return None
        starts = [s for s, _ in offsets]
        ends = [e for _, e in offsets]
        weights, hit = [1.0] * len(offsets), False
        for a, b in spans:
            # Offsets only grow, so the tokens overlapping [a, b) form one slice.
            for i in range(bisect_right(ends, a), bisect_left(starts, b)):
                if trained[i] and ends[i] > starts[i]:  # a zero-width token holds no term text
                    weights[i], hit = self.weight, True
        return tuple(weights) if hit else None


def encode_record(record: Mapping[str, Any], tokenizer: Any, template: ChatTemplate, max_len: int,
                  truncation: str = "drop", train_on_prompt: bool = False,
                  keep_reasoning: bool = True, term_weighter: TermWeighter | None = None) -> Encoded:
    """Tokenize one prepared record and mark the tokens the loss is computed on.

    Args:
        record: a canonical record, `{"messages": [...]}` or `{"text": ...}` (plus "metadata").
        tokenizer: a fast Hugging Face tokenizer.
        template: the model's chat template (used for chat records).
        max_len: the most tokens an example may have.
        truncation: "drop" skips a longer record; "truncate" keeps its first `max_len` tokens.
        train_on_prompt: train on prompt tokens too (chat records).
        keep_reasoning: keep the final answer's reasoning block (see `ChatTemplate.encode`).
        term_weighter: when given, trained tokens of domain terms get its weight
            (`Example.weights`; None when the record holds no trained term).

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
    ids, trained, weights = _tokenize(record, tokenizer, template, train_on_prompt, keep_reasoning, term_weighter)
    if len(ids) > max_len:
        if truncation == "drop":
            return Encoded(None, SKIP_TOO_LONG)
        ids, trained = ids[:max_len], trained[:max_len]
        weights = weights[:max_len] if weights is not None else None
    # Position 0 has no context to be predicted from; dropping it here keeps counts honest.
    labels = [IGNORE_INDEX] + [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], trained[1:])]
    if all(label == IGNORE_INDEX for label in labels):
        return Encoded(None, SKIP_NO_TRAINED_TOKENS)
    return Encoded(Example(ids, labels, weights))


def _tokenize(record: Mapping[str, Any], tokenizer: Any, template: ChatTemplate, train_on_prompt: bool,
              keep_reasoning: bool, weighter: TermWeighter | None,
              ) -> tuple[list[int], list[bool], tuple[float, ...] | None]:
    if "messages" in record:
        if weighter is None:
            ids, trained = template.encode(record["messages"], tokenizer, train_on_prompt=train_on_prompt,
                                           keep_reasoning=keep_reasoning)
            return ids, trained, None
        return _encode_chat_weighted(record["messages"], tokenizer, template, train_on_prompt, keep_reasoning,
                                     weighter)
    if "text" in record:
        text = record["text"]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=weighter is not None)
        ids = list(enc["input_ids"])
        weights = weighter.token_weights(text, enc["offset_mapping"], [True] * len(ids)) if weighter else None
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None:
            ids.append(eos)
            weights = (*weights, 1.0) if weights is not None else None
        return ids, [True] * len(ids), weights
    raise UserError("a prepared record has neither 'messages' nor 'text'",
                    hint="train on the output of `domaintune prepare`")


def _encode_chat_weighted(messages: Any, tokenizer: Any, template: ChatTemplate, train_on_prompt: bool,
                          keep_reasoning: bool, weighter: TermWeighter,
                          ) -> tuple[list[int], list[bool], tuple[float, ...] | None]:
    """`ChatTemplate.encode`, step by step, keeping the offsets the weights need."""
    segments = template.render_segments(messages, keep_reasoning=keep_reasoning)
    text = "".join(piece for piece, _ in segments)
    ids, offsets = _tokenize_with_offsets(tokenizer, text)
    trained = [True] * len(ids) if train_on_prompt else _mask_from_offsets(offsets, _trained_spans(segments))
    return ids, trained, weighter.token_weights(text, offsets, trained)


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
        When some example has `weights`, also `loss_weights` (float32 `[1, T]`, 1.0 for
        examples without).
    """
    ids = [t for ex in examples for t in ex.input_ids]
    labels = [lab for ex in examples for lab in [IGNORE_INDEX, *ex.labels[1:]]]
    positions = [p for ex in examples for p in range(len(ex))]
    batch = {"input_ids": torch.tensor([ids], dtype=torch.long),
             "labels": torch.tensor([labels], dtype=torch.long),
             "position_ids": torch.tensor([positions], dtype=torch.long)}
    if any(ex.weights is not None for ex in examples):
        weights = [w for ex in examples for w in (ex.weights or (1.0,) * len(ex))]
        batch["loss_weights"] = torch.tensor([weights], dtype=torch.float32)
    starts = [0]
    for ex in examples[:-1]:
        starts.append(starts[-1] + len(ex))
    return _with_choices(batch, examples, starts)


def _with_choices(batch: dict[str, torch.Tensor], examples: Sequence[Example],
                  starts: Sequence[int]) -> dict[str, torch.Tensor]:
    """Add the examples' closed-set decisions: `choice_positions` (`[M]`, flat indices into the
    `[B, T]` targets: the position that predicts the decided token), `choice_allowed` (`[M, K]`
    token ids), `choice_mask` (`[M, K]`, False on padding) and `choice_example` (`[M]`, the example
    each decision belongs to, in batch order). `starts[i]`: example i's flat start."""
    found = [(start + pos - 1, allowed, i) for i, (ex, start) in enumerate(zip(examples, starts, strict=True))
             for pos, allowed in ex.choices or ()]
    if not found:
        return batch
    width = max(len(allowed) for _, allowed, _ in found)
    ids = torch.zeros((len(found), width), dtype=torch.long)
    mask = torch.zeros((len(found), width), dtype=torch.bool)
    for row, (_, allowed, _) in enumerate(found):
        ids[row, :len(allowed)] = torch.tensor(allowed, dtype=torch.long)
        mask[row, :len(allowed)] = True
    return {**batch, "choice_positions": torch.tensor([p for p, _, _ in found], dtype=torch.long),
            "choice_allowed": ids, "choice_mask": mask,
            "choice_example": torch.tensor([i for _, _, i in found], dtype=torch.long)}


def collate_padded(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch.

    Args:
        examples: the examples of one batch.
        pad_id: the id written into padding (never attended to, never trained).

    Returns:
        `input_ids`, `labels` and `attention_mask`, each `[B, max length]`; labels are
        `IGNORE_INDEX` on padding. When some example has `weights`, also `loss_weights`
        (float32, same shape, 1.0 elsewhere).
    """
    width = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weighted = any(ex.weights is not None for ex in examples)
    weights = torch.ones((len(examples), width), dtype=torch.float32) if weighted else None
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        labels[row, 0] = IGNORE_INDEX
        mask[row, :n] = 1
        if weights is not None and ex.weights is not None:
            weights[row, :n] = torch.tensor(ex.weights, dtype=torch.float32)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if weights is not None:
        batch["loss_weights"] = weights
    return _with_choices(batch, examples, [row * width for row in range(len(examples))])


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
