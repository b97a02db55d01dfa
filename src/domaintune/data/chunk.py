"""Cutting long raw documents into token-bounded windows for continued pre-training.

Windows are cut on the tokenizer's own tokens (so a window holds at most `max_tokens` of
them) and returned as slices of the original text, taken from the fast tokenizer's character
offsets: nothing is decoded, so no whitespace, casing or Unicode form is altered. Without a
tokenizer, whitespace-separated words stand in for tokens.
"""

from __future__ import annotations

import re
from typing import Any

from domaintune.errors import UserError

__all__ = ["chunk_by_tokens"]

_WORD = re.compile(r"\S+")


def chunk_by_tokens(text: str, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[str]:
    """Split `text` into windows of at most `max_tokens` tokens, `overlap` tokens shared.

    Each window runs from the start of its first token to the start of the token after its
    last one (the last window to the end of the text), so with `overlap=0` the windows
    concatenate back to `text` exactly. A cut never falls inside a character whose bytes span
    several tokens (byte-level BPE on CJK text); such a window ends a token or two early.

    Args:
        text: the document.
        tokenizer: a fast (Rust-backed) Hugging Face tokenizer, or None to count
            whitespace-separated words as tokens.
        max_tokens: the most tokens per window (>= 1).
        overlap: tokens shared by consecutive windows (0 <= overlap < max_tokens).

    Returns:
        Substrings of `text`; `[text]` if it fits in one window.

    Raises:
        UserError: if `max_tokens` or `overlap` is out of range, or the tokenizer cannot
            report character offsets (a slow, Python-only tokenizer).

    Example:
        >>> chunk_by_tokens("one two three four five", None, max_tokens=2)
        ['one two ', 'three four ', 'five']
        >>> chunk_by_tokens("one two three four five", None, max_tokens=3, overlap=1)
        ['one two three ', 'three four five']
    """
    if max_tokens < 1:
        raise UserError(f"chunk max_tokens must be >= 1, got {max_tokens}", hint="use for example 2048")
    if not 0 <= overlap < max_tokens:
        raise UserError(f"chunk overlap must be in [0, max_tokens={max_tokens}), got {overlap}",
                        hint=f"use an overlap below {max_tokens}, for example {max_tokens // 8}")
    spans = _token_spans(text, tokenizer)
    if len(spans) <= max_tokens:
        return [text]
    # cuts[i]: where a window starting at token i begins; a None cut would split a character.
    cuts = [0] + [start if start >= prev_end else None
                  for (start, _), (_, prev_end) in zip(spans[1:], spans)] + [len(text)]
    chunks = []
    first = 0
    while True:
        end = _window_end(cuts, first, first + max_tokens)
        chunks.append(text[cuts[first]:cuts[end]])
        if end == len(spans):
            return chunks
        first = max(end - overlap, first + 1)
        while cuts[first] is None:  # cuts[end] is set, so this stops at `end` at the latest
            first += 1


def _window_end(cuts: list[int | None], first: int, limit: int) -> int:
    """Token index where a window from `first` ends: the last clean cut at or before `limit`."""
    end = min(limit, len(cuts) - 1)
    while cuts[end] is None and end > first + 1:
        end -= 1
    while cuts[end] is None:  # one character has more tokens than a window: keep it whole
        end += 1
    return end


def _token_spans(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token of `text`, without special tokens."""
    if tokenizer is None:
        return [match.span() for match in _WORD.finditer(text)]
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as err:  # slow tokenizers cannot map tokens to characters
        raise UserError(f"chunking needs a fast tokenizer with offsets ({type(tokenizer).__name__} has none)",
                        hint="load the tokenizer with use_fast=True") from err
    return [tuple(span) for span in encoding["offset_mapping"]]
