"""Closed answer sets: when the answers of a task are a fixed list of labels.

A classification task written as chat ("which chapter?" -> "Neoplasms") has few distinct answers
repeated across many rows. Recognising that lets eval and serve decode inside the set (no answer
can fall outside it, each answer gets a probability) and lets training select checkpoints by
accuracy. The rule is a property of the training data alone, so every command derives the same
set: at least `MIN_ROWS` chat rows, at least two distinct final answers, and no more distinct
answers than `MAX_SHARE` of the rows (nor than `MAX_ANSWERS`).

    >>> rows = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "ab"[i % 2]}]}
    ...         for i in range(40)]
    >>> closed_answer_set(rows)
    ['a', 'b']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

MIN_ROWS = 20
MAX_SHARE = 0.25
MAX_ANSWERS = 5000


def final_answer(record: Mapping[str, Any]) -> str | None:
    """The content of a chat record's last assistant message (None for text records)."""
    answers = [m.get("content") for m in record.get("messages") or () if m.get("role") == "assistant"]
    return str(answers[-1]) if answers else None


def prompt_text(record: Mapping[str, Any]) -> str:
    """The text before the final answer (system and user turns, joined by newlines)."""
    messages = list(record.get("messages") or ())
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return "\n".join(str(m.get("content", "")) for m in messages[:last])


def closed_answer_set(records: Iterable[Mapping[str, Any]]) -> list[str] | None:
    """The sorted distinct final answers when they form a closed set, else None (see the module doc)."""
    answers = [a for a in (final_answer(r) for r in records) if a is not None]
    counts = Counter(answers)
    if len(answers) < MIN_ROWS or not 2 <= len(counts) <= min(MAX_ANSWERS, MAX_SHARE * len(answers)):
        return None
    return sorted(counts)
