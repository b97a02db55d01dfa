"""What training will see: rendered conversations with the trained tokens marked.

`domaintune inspect DATA --model M` prints a few examples with trained tokens highlighted and the
share of tokens that carry loss, so a template or mask mistake is visible before hours of training.
It uses the very `encode_record` the trainer uses, so what it shows is what is trained.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from domaintune.errors import UserError
from domaintune.models.templates import ChatTemplate
from domaintune.models.batch import IGNORE_INDEX, encode_record


@dataclass
class Inspection:
    """Spans of a few examples and token totals over all inspected records."""

    examples: list[list[tuple[str, bool]]] = field(default_factory=list)
    tokens: int = 0
    trained: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def share(self) -> float:
        return self.trained / self.tokens if self.tokens else 0.0


def inspect_records(path: str, tokenizer: Any, template: ChatTemplate, max_len: int = 1024, show: int = 3,
                    limit: int = 1000, train_on_prompt: bool = False,
                    transform: Callable[[list[dict]], list[dict]] | None = None) -> Inspection:
    """Encode up to `limit` records of a prepared JSONL file and keep `show` of them as spans.

    `transform` rewrites the records first as training would (retrieval puts entries in prompts).

    Returns:
        An `Inspection`: per shown example, (text, trained) spans decoded token run by token run.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError("data file not found", file=path, hint="give a prepared split, e.g. prepared/train.jsonl")
    result = Inspection()
    records = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n > limit:
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError("not a JSON line", file=path, line=n, hint="inspect the output of `domaintune prepare`") from None
    for record in transform(records) if transform is not None else records:
        encoded = encode_record(record, tokenizer, template, max_len, train_on_prompt=train_on_prompt)
        if encoded.example is None:
            result.skipped[encoded.reason] += 1
            continue
        labels = encoded.example.labels
        result.tokens += len(labels)
        result.trained += sum(label != IGNORE_INDEX for label in labels)
        if len(result.examples) < show:
            result.examples.append(_spans(encoded.example.input_ids, labels, tokenizer))
    return result


def _spans(ids: list[int], labels: list[int], tokenizer: Any) -> list[tuple[str, bool]]:
    spans: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            spans.append((tokenizer.decode(ids[start:i]), labels[start] != IGNORE_INDEX))
            start = i
    return spans
