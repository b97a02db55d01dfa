"""Training data for the loop: prepared JSONL splits become examples, then a fixed batch order per epoch.

    records = load_split("prepared/train.jsonl")            # a list of dicts; keeps path and sha256
    examples, dropped = encode_split(records, tokenizer, template, max_len=1024)
    require_trainable(examples, dropped, records.path, max_len=1024, truncation="drop", train_on_prompt=False)
    rows = epoch_batches(examples, epoch=0, seed=0, packing=True, batch_tokens=2048, batch_size=4)

The order of an epoch depends only on (seed, epoch) (and, with a curriculum, on each example's
bucket, itself a function of the data), so a resumed run finds its place from (epoch, batch
index, micro step) alone, without saving any sampler state.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from domaintune.errors import UserError
from domaintune.models.templates import ChatTemplate
from domaintune.models.batch import (SKIP_NO_TRAINED_TOKENS, SKIP_TOO_LONG, Example, TermWeighter, collate_packed,
                                      collate_padded, encode_record, length_grouped_order, pack_examples)

# Mixes seed and epoch into one shuffle seed (a large odd constant keeps (s, e) pairs apart).
_EPOCH_STRIDE = 1_000_003


class Split(list):
    """The records of one prepared file, plus where they came from (for lineage).

    Attributes:
        path: the file read.
        sha256: hex digest of its bytes, computed while reading.
    """

    def __init__(self, records: Iterable[dict[str, Any]], path: Path, sha256: str) -> None:
        super().__init__(records)
        self.path = path
        self.sha256 = sha256


def load_split(path: str | Path) -> Split:
    """Read a prepared JSONL split (`{"messages": ...}` or `{"text": ...}` per line).

    Args:
        path: e.g. `prepared/train.jsonl`.

    Returns:
        The records, as a list that also carries `.path` and `.sha256` of the file.

    Raises:
        UserError: the file is missing, or a line is not a JSON object (with its line number).

    Example:
        >>> load_split("prepared/val.jsonl").sha256[:8]   # doctest: +SKIP
        '3f2a9c10'
    """
    file = Path(path)
    if not file.is_file():
        raise UserError("prepared data file not found", file=str(file),
                        hint="run `domaintune prepare` first, or set train.data_dir to its output folder")
    raw = file.read_bytes()
    records = []
    # JSON Lines end at "\n" only (a "\r" before it is JSON whitespace): str.splitlines would also cut at
    # U+2028, U+2029 or \x85, which json.dumps(ensure_ascii=False) leaves raw inside strings.
    for number, line in enumerate(raw.decode("utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"not a JSON line ({err.msg})", file=str(file), line=number,
                            hint="train on the output of `domaintune prepare`") from None
        if not isinstance(record, dict):
            raise UserError("a line is not a JSON object", file=str(file), line=number,
                            hint="train on the output of `domaintune prepare`")
        records.append(record)
    return Split(records, file, hashlib.sha256(raw).hexdigest())


def encode_split(records: Sequence[dict[str, Any]], tokenizer: Any, template: ChatTemplate, max_len: int,
                 truncation: str = "drop", train_on_prompt: bool = False, keep_reasoning: bool = True,
                 term_weighter: TermWeighter | None = None) -> tuple[list[Example], Counter[str]]:
    """Encode every record once with `collate.encode_record`, counting the ones skipped.

    Args:
        records: canonical prepared records.
        tokenizer: the model's (fast) tokenizer.
        template: the model's chat template.
        max_len, truncation, train_on_prompt, keep_reasoning: as in `encode_record`.
        term_weighter: a `collate.TermWeighter` giving domain-term tokens more loss weight
            (`Example.weights`); None: every token weighs 1. Only for training examples.

    Returns:
        `(examples, dropped)`: the kept examples in record order, and {reason: count} of skipped records.

    Example:
        >>> examples, dropped = encode_split(load_split("prepared/val.jsonl"), tok, tpl, 1024)  # doctest: +SKIP
    """
    examples, _, dropped = encode_indexed(records, tokenizer, template, max_len, truncation, train_on_prompt,
                                          keep_reasoning, term_weighter)
    return examples, dropped


def encode_indexed(records: Sequence[dict[str, Any]], tokenizer: Any, template: ChatTemplate, max_len: int,
                   truncation: str = "drop", train_on_prompt: bool = False, keep_reasoning: bool = True,
                   term_weighter: TermWeighter | None = None) -> tuple[list[Example], list[int], Counter[str]]:
    """`encode_split`, plus the index of the record each kept example came from.

    Returns:
        `(examples, kept, dropped)` with `examples[j]` encoded from `records[kept[j]]`.
    """
    examples: list[Example] = []
    kept: list[int] = []
    dropped: Counter[str] = Counter()
    for index, record in enumerate(records):
        encoded = encode_record(record, tokenizer, template, max_len, truncation, train_on_prompt, keep_reasoning,
                                term_weighter)
        if encoded.example is None:
            dropped[encoded.reason] += 1
        else:
            examples.append(encoded.example)
            kept.append(index)
    return examples, kept, dropped


def require_trainable(examples: Sequence[Example], dropped: Counter[str], source: str | Path | None, *,
                      max_len: int, truncation: str, train_on_prompt: bool) -> None:
    """Refuse to train when not a single token would be trained, saying why.

    Args:
        examples: the encoded training examples.
        dropped: skip reasons from `encode_split`.
        source: the data file, named in the message.
        max_len, truncation, train_on_prompt: the settings used to encode (named in the fix).

    Raises:
        UserError: no example is left (every row too long, or no answer tokens to learn).
    """
    if examples:
        return  # encode_record keeps only examples with at least one supervised token
    where = str(source) if source is not None else None
    total = sum(dropped.values())
    if total == 0:
        raise UserError("the training split is empty", file=where, hint="check the prepare report")
    if dropped[SKIP_TOO_LONG] == total and truncation == "drop":
        raise UserError(f"all {total} training rows are longer than max_len={max_len} tokens and "
                        "truncation=drop removes them", file=where,
                        hint="raise train.max_len, or set train.truncation: truncate")
    if dropped[SKIP_NO_TRAINED_TOKENS] and not train_on_prompt:
        cut = " or raise train.max_len (truncation may cut answers away)" if truncation == "truncate" else ""
        raise UserError(f"no training row has an assistant answer to learn ({describe_skips(dropped)})", file=where,
                        hint=f"add assistant turns to the data, set train.train_on_prompt: true{cut}")
    raise UserError(f"no token would be trained ({describe_skips(dropped)})", file=where,
                    hint="raise train.max_len, or check the data with `domaintune inspect`")


def describe_skips(dropped: Counter[str]) -> str:
    """Skip counts in words, most common first: "3 too long, 1 no trained tokens"."""
    return ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in dropped.most_common())


def epoch_batches(examples: Sequence[Example], epoch: int, seed: int, packing: bool, batch_tokens: int,
                  batch_size: int) -> list[list[int]]:
    """The micro-batches of one epoch, as lists of example indices, in training order.

    Packing: shuffle, pack into rows of at most `batch_tokens` tokens (best-fit decreasing), then
    shuffle the rows, so an epoch does not run longest-first. An example longer than
    `batch_tokens` gets a row of its own. Without packing: HF-style length grouping (shuffle, sort
    inside megabatches), cut into batches of `batch_size`.

    Args:
        examples: the encoded examples (only their lengths are used).
        epoch: the epoch number; with `seed` it alone fixes the order.
        seed: the run's seed.
        packing: pack rows (padding-free) or build padded batches.
        batch_tokens: tokens per packed row.
        batch_size: examples per padded batch.

    Returns:
        Micro-batches; every example index appears exactly once per epoch.

    Example:
        >>> epoch_batches(examples, 0, 0, True, 2048, 4) == epoch_batches(examples, 0, 0, True, 2048, 4)  # doctest: +SKIP
        True
    """
    mixed = seed * _EPOCH_STRIDE + epoch
    if not packing:
        order = length_grouped_order([len(ex) for ex in examples], batch_size, mixed)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(mixed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    fits = [i for i in order if len(examples[i]) <= batch_tokens]
    rows = [[fits[j] for j in row] for row in pack_examples([examples[i] for i in fits], batch_tokens)]
    rows += [[i] for i in order if len(examples[i]) > batch_tokens]
    rng.shuffle(rows)
    return rows


def curriculum_batches(examples: Sequence[Example], buckets: Sequence[int], seed: int, packing: bool,
                       batch_tokens: int, batch_size: int) -> list[list[int]]:
    """A curriculum epoch: the micro-batches of bucket 0, then bucket 1, and so on.

    Inside a bucket the order is `epoch_batches` of that bucket alone (shuffled and packed by the
    seed), so no row mixes buckets.

    Args:
        examples: the encoded examples.
        buckets: each example's bucket rank (0 first), e.g. from `forgetting.curriculum_buckets`.
        seed, packing, batch_tokens, batch_size: as in `epoch_batches`.

    Returns:
        Micro-batches of example indices; every index appears exactly once.

    Example:
        >>> curriculum_batches(fake_examples([3, 9, 4]), [1, 0, 1], 0, False, 64, 1)  # doctest: +SKIP
        [[1], [2], [0]]
    """
    rows: list[list[int]] = []
    for bucket in sorted(set(buckets)):
        members = [i for i, b in enumerate(buckets) if b == bucket]
        sub = [examples[i] for i in members]
        rows += [[members[j] for j in row] for row in epoch_batches(sub, 0, seed, packing, batch_tokens, batch_size)]
    return rows


def collate_rows(examples: Sequence[Example], rows: Iterable[list[int]], packing: bool,
                 pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Collate micro-batches of example indices: packed rows, or right-padded batches."""
    chosen = ([examples[i] for i in row] for row in rows)
    return [collate_packed(group) if packing else collate_padded(group, pad_id) for group in chosen]


class BatchStream:
    """The training examples as an endless run of micro-batches, epoch after epoch.

    A position is (epoch, batch index); `take` returns the next micro-batches and the position
    after them, so a step may run across an epoch boundary and a resume needs only the position.
    With `buckets` (a curriculum), epoch 0 is `curriculum_batches` and later epochs are shuffled
    as usual.

    Args:
        examples: the encoded training examples.
        seed, packing, batch_tokens, batch_size: as in `epoch_batches`.
        pad_id: the padding id for padded batches.
        buckets: each example's curriculum bucket, or None for no curriculum.
    """

    def __init__(self, examples: Sequence[Example], seed: int, packing: bool, batch_tokens: int, batch_size: int,
                 pad_id: int, buckets: Sequence[int] | None = None) -> None:
        self.examples, self.seed, self.packing, self.buckets = examples, seed, packing, buckets
        self.prefix: Any = None  # a train.frozen.FrozenPrefix: batches carry its cached states
        self.batch_tokens, self.batch_size, self.pad_id = batch_tokens, batch_size, pad_id
        self._cache: dict[int, list[list[int]]] = {}
        # A curriculum epoch packs bucket by bucket, so it may hold a few more rows than the others.
        later = len(self.rows(1)) if buckets is not None else None
        self.first_epoch = len(self.rows(0))
        self.per_epoch = later if later is not None else self.first_epoch

    def rows(self, epoch: int) -> list[list[int]]:
        """The micro-batches of one epoch (only the latest epoch asked for is cached)."""
        if epoch not in self._cache:
            if epoch == 0 and self.buckets is not None:
                rows = curriculum_batches(self.examples, self.buckets, self.seed, self.packing, self.batch_tokens,
                                          self.batch_size)
            else:
                rows = epoch_batches(self.examples, epoch, self.seed, self.packing, self.batch_tokens,
                                     self.batch_size)
            self._cache = {epoch: rows}
        return self._cache[epoch]

    def take(self, epoch: int, index: int, n: int,
             part: tuple[int, int] = (0, 1)) -> tuple[list[dict[str, torch.Tensor]], tuple[int, int], int]:
        """The next `n` collated micro-batches from (epoch, index), the position after, and their example count.

        With `part=(r, W)` (process r of W, `train/distributed.py`), only micro-batches r, r+W, ...
        of the `n` are collated; the position and the example count are still those of all `n`.
        """
        rows: list[list[int]] = []
        while len(rows) < n:
            if index >= len(self.rows(epoch)):
                epoch, index = epoch + 1, 0
                continue
            rows.append(self.rows(epoch)[index])
            index += 1
        rank, world = part
        mine = rows[rank::world]
        batches = collate_rows(self.examples, mine, self.packing, self.pad_id)
        if self.prefix is not None:  # the frozen layers' output instead of the tokens (train/frozen.py)
            batches = [self.prefix.attach(b, row) for b, row in zip(batches, mine)]
        return batches, (epoch, index), sum(len(r) for r in rows)

    def epochs(self, position: tuple[int, int]) -> float:
        """A position as fractional epochs."""
        if position[0] == 0:
            return position[1] / self.first_epoch
        return position[0] + position[1] / self.per_epoch

    def epochs_in(self, batches: float) -> float:
        """How many passes `batches` micro-batches make (the inverse of `batches_in`)."""
        if self.buckets is None or batches <= self.first_epoch:
            return batches / (self.per_epoch if self.buckets is None else self.first_epoch)
        return 1.0 + (batches - self.first_epoch) / self.per_epoch

    def batches_in(self, epochs: float) -> float:
        """How many micro-batches `epochs` passes over the data hold."""
        if self.buckets is None:
            return epochs * self.per_epoch
        return min(epochs, 1.0) * self.first_epoch + max(epochs - 1.0, 0.0) * self.per_epoch
