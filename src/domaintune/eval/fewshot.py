"""Few-shot prompting baselines: K training examples in front of each test conversation.

Comparing a tuned model against the base model prompted with K examples shows what fine-tuning
buys over prompting alone. Examples are (user, assistant) pairs taken from training records,
chosen at random or by lexical similarity to the test prompt (word-set Jaccard; CJK text counts
each character as a word, since it has no spaces). scikit-learn is not a dependency, so there is
no TF-IDF; Jaccard needs nothing and is enough to find examples on the same topic.

Choice is deterministic: the random draw is seeded by `seed` and the test prompt's text, so a
record gets the same examples whatever its position in the test set. A pool example whose
prompt equals the test prompt (case and whitespace ignored) is never used: it would hand the
model the answer.

    >>> pool = build_pool(load_split("prepared/train.jsonl"))                  # doctest: +SKIP
    >>> shots = functools.partial(few_shot_messages, pool=pool, k=3, by="similar")  # doctest: +SKIP
    >>> generate_answers(model, tok, tpl, test, params, few_shot=shots)        # doctest: +SKIP
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domaintune.errors import UserError

FEW_SHOT_BY = ("random", "similar")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class FewShotPool:
    """Training examples ready for selection: built once, used for every test record.

    Attributes:
        pairs: distinct (user, assistant) pairs, in first-seen order.
        keys: each pair's normalized prompt (for the identical-prompt rule).
        words: each pair's prompt as a set of words (for similarity).
    """

    pairs: tuple[tuple[str, str], ...]
    keys: tuple[str, ...]
    words: tuple[frozenset[str], ...]


def build_pool(records: Sequence[Mapping[str, Any]]) -> FewShotPool:
    """Collect the final (user, assistant) pair of each chat record; others are skipped.

    Example:
        >>> pool = build_pool([{"messages": [{"role": "user", "content": "Hi"},
        ...                                  {"role": "assistant", "content": "Hello"}]}])
        >>> pool.pairs
        (('Hi', 'Hello'),)
    """
    pairs = list(dict.fromkeys(p for p in map(_final_pair, records) if p is not None))
    return FewShotPool(tuple(pairs), tuple(_key(u) for u, _ in pairs), tuple(_words(u) for u, _ in pairs))


def few_shot_messages(record: Mapping[str, Any], pool: FewShotPool | Sequence[Mapping[str, Any]], k: int, *,
                      seed: int = 0, by: str = "random") -> list[dict[str, str]]:
    """The record's conversation with k example pairs put after its system messages.

    Args:
        record: a chat record, `{"messages": [...]}`.
        pool: a `FewShotPool` (build it once with `build_pool`), or training records.
        k: how many examples; fewer when the pool has fewer usable ones.
        seed: seeds the choice (together with the test prompt's text).
        by: "random", or "similar" (highest word-set Jaccard with the test prompt; ties broken by
            the seeded order). Similar examples come last, nearest the question.

    Returns:
        New messages: leading system messages, then user/assistant example pairs, then the rest
        of the conversation unchanged (its final assistant answer included).

    Raises:
        UserError: `by` is unknown or `k` is negative.

    Example:
        >>> rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
        >>> pool = build_pool([{"messages": [{"role": "user", "content": "1+1?"},
        ...                                  {"role": "assistant", "content": "2"}]}])
        >>> [m["content"] for m in few_shot_messages(rec, pool, k=1)]
        ['1+1?', '2', '2+2?', '4']
    """
    if by not in FEW_SHOT_BY:
        raise UserError(f"unknown few-shot selection '{by}'", hint=f"use one of: {', '.join(FEW_SHOT_BY)}")
    if k < 0:
        raise UserError(f"few-shot k must be 0 or more, got {k}")
    pool = pool if isinstance(pool, FewShotPool) else build_pool(pool)
    messages = [dict(m) for m in record["messages"]]
    chosen = _choose(pool, _test_prompt(messages), k, seed, by)
    head = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    shots = [{"role": role, "content": text} for i in chosen
             for role, text in zip(("user", "assistant"), pool.pairs[i])]
    return messages[:head] + shots + messages[head:]


def _choose(pool: FewShotPool, prompt: str, k: int, seed: int, by: str) -> list[int]:
    key = _key(prompt)
    candidates = [i for i, other in enumerate(pool.keys) if other != key]
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    random.Random(f"{seed}\0{key}").shuffle(candidates)
    if by == "random" or k == 0:
        return candidates[:k]
    words = _words(prompt)
    rank = sorted(range(len(candidates)), key=lambda r: (-_jaccard(words, pool.words[candidates[r]]), r))
    return [candidates[r] for r in reversed(rank[:k])]


def _final_pair(record: Mapping[str, Any]) -> tuple[str, str] | None:
    messages = record.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    user = next((messages[i] for i in range(last - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if user is None:
        return None
    return str(user["content"]), str(messages[last]["content"])


def _test_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return users[-1] if users else ""


def _key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.casefold()))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0
