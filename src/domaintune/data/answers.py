"""Closed answer sets: when the answers of a task are a fixed list of labels.

A classification task written as chat ("which chapter?" -> "Neoplasms") has few distinct answers
repeated across many rows. Recognising that lets eval and serve decode inside the set (no answer
can fall outside it, each answer gets a probability) and lets training select checkpoints by
accuracy. The rule is a property of the training data alone, so every command derives the same
set: at least `MIN_ROWS` chat rows, at least two distinct final answers, and no more distinct
answers than `MAX_SHARE` of the rows (nor than `MAX_ANSWERS`). `normalize_answer` is the one
rule by which an answer matches another (eval's exact match and labels, export's parity check).

    >>> rows = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "ab"[i % 2]}]}
    ...         for i in range(40)]
    >>> closed_answer_set(rows)
    ['a', 'b']
"""

from __future__ import annotations

import re
import string
import unicodedata
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


# Candidates for stripping: anything that is neither a word character nor whitespace, plus "_".
# Each candidate is then kept unless it is punctuation (Unicode category P*) or ASCII punctuation,
# so combining marks (Devanagari vowel signs) and symbols such as "°" survive.
_NON_WORD = re.compile(r"[^\w\s]|_")
_ASCII_PUNCT = frozenset(string.punctuation)
_SPACES = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)


def _strip_punct(match: re.Match[str]) -> str:
    ch = match.group()
    return "" if ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P") else ch


def normalize_answer(text: str, *, lower: bool = True, strip_punct: bool = True,
                     collapse_space: bool = True, strip_articles: bool = False) -> str:
    """Normalize a short answer for matching (SQuAD-style, Unicode aware).

    The text is NFKC-normalized first, so full-width forms common in Chinese text ("ＡＢＣ１")
    match their ASCII twins. Punctuation is removed, not replaced by a space (as in SQuAD), which
    is what CJK text needs; CJK punctuation such as "，。「」" counts as punctuation.

    Args:
        text: the answer.
        lower: case-fold (Unicode-aware lower-casing).
        strip_punct: remove punctuation (Unicode category P*, plus ASCII punctuation).
        collapse_space: trim and collapse runs of whitespace to one space.
        strip_articles: remove the English articles a, an, the (SQuAD).

    Example:
        >>> normalize_answer("  The  Answer: 「糖尿病」。 ", strip_articles=True)
        'answer 糖尿病'
    """
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.casefold()
    if strip_punct:
        text = _NON_WORD.sub(_strip_punct, text)
    if strip_articles:
        text = _ARTICLES.sub(" ", text)
    if collapse_space:
        text = _SPACES.sub(" ", text).strip()
    return text
