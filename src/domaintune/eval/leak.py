"""Memorization signals for the eval report: long verbatim spans of the training data, and PII,
in the model's generations.

Users in medicine and law must see whether a tuned model repeats its training data word for
word or emits personal data. Two checks:

- `verbatim_overlap`: the longest span of each generation that occurs verbatim in the training
  texts, flagged from `min_words` consecutive words (or `min_chars` characters for Chinese, which
  has no spaces). Text is compared casefolded with punctuation ignored. The training n-grams are
  hashed into one sorted uint64 array with numpy (16 bytes per n-gram position at most), so 10k
  training rows index in well under a second; candidate spans are then confirmed by a plain
  substring search, because overlapping n-gram hits can be stitched from different places.
- `pii_in_outputs`: the PII detectors of `domaintune.data.pii` (the ones `prepare` masks with)
  run on each generation, plus a count of the placeholders ("<EMAIL>") that a model trained on
  masked data tends to echo. Examples are shown masked, so the report does not leak again.

    >>> verbatim_overlap(["one two three four"], ["zero one two three four five"], min_words=3)["n_flagged"]
    1
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

from domaintune.data.pii import PLACEHOLDERS, PiiMasker
from domaintune.eval.metrics import is_chinese

__all__ = ["pii_in_outputs", "verbatim_overlap"]

_WORD = re.compile(r"\w+")
_CHAR = re.compile(r"\w")
_MULT = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime; any odd multiplier mixes well enough
_KIND_NAMES = {"email": "an email address", "phone": "a phone number", "cn_id": "a Chinese ID number",
               "bank_card": "a bank card number", "ip": "an IP address"}
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


def _units(text: str, unit: str) -> list[str]:
    """Casefolded words (unit "words") or word characters (unit "chars"), punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return (_WORD if unit == "words" else _CHAR).findall(text)


def _join(units: Sequence[str], unit: str) -> str:
    return (" " if unit == "words" else "").join(units)


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every length-n window of `ids` (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
        for k in range(n):
            h = h * _MULT + ids[k:len(ids) - n + 1 + k]
    return h


class _Index:
    """Hashed n-grams of the training texts at one unit (words or chars), plus their joined text."""

    def __init__(self, texts: Sequence[str], unit: str, n: int) -> None:
        self.unit, self.n = unit, n
        self.vocab: dict[str, int] = {}
        docs = [_units(t, unit) for t in texts]
        # Words are padded with spaces so a span only matches whole words; a newline ends each
        # text, and no unit holds one, so a span never matches across two training texts.
        self.pad = " " if unit == "words" else ""
        chunks = [self.pad + _join(d, unit) + self.pad for d in docs]
        self.starts = np.cumsum([0] + [len(c) + 1 for c in chunks[:-1]]).tolist()
        self.text = "\n".join(chunks)
        ids = np.fromiter((self.vocab.setdefault(u, len(self.vocab) + 1) for d in docs for u in d),
                          dtype=np.uint64)
        if len(ids) < n:
            self.hashes = np.zeros(0, dtype=np.uint64)
            return
        doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
        same_doc = doc_of[:len(ids) - n + 1] == doc_of[n - 1:]
        self.hashes = np.unique(_window_hashes(ids, n)[same_doc])

    def hits(self, units: list[str]) -> np.ndarray:
        """For each length-n window of `units`, whether its hash is among the training n-grams."""
        if len(units) < self.n or not self.hashes.size:
            return np.zeros(max(0, len(units) - self.n + 1), dtype=bool)
        # A unit the training texts never use gets id 0, which no training window holds; a hash
        # collision could still let such a window through, and `locate` then rejects it.
        ids = np.fromiter((self.vocab.get(u, 0) for u in units), dtype=np.uint64)
        h = _window_hashes(ids, self.n)
        pos = np.minimum(np.searchsorted(self.hashes, h), self.hashes.size - 1)
        return self.hashes[pos] == h

    def locate(self, span: Sequence[str]) -> int | None:
        """The training row that contains `span` verbatim, or None."""
        at = self.text.find(self.pad + _join(span, self.unit) + self.pad)
        return None if at < 0 else bisect.bisect_right(self.starts, at) - 1


def _runs(hits: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) window index of each run of consecutive hits, longest first."""
    idx = np.flatnonzero(hits)
    if not idx.size:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    firsts = np.concatenate([[idx[0]], idx[breaks + 1]])
    lasts = np.concatenate([idx[breaks], [idx[-1]]])
    return sorted(zip(firsts.tolist(), lasts.tolist()), key=lambda r: r[0] - r[1])


def _longest_verified(units: list[str], index: _Index) -> tuple[int, int, int] | None:
    """(start, end, training row) of the longest span of >= n units found verbatim, or None."""
    best: tuple[int, int, int] | None = None
    for first, last in _runs(index.hits(units)):
        stop = last + index.n
        if best and stop - first <= best[1] - best[0]:
            break  # runs come longest first; this one cannot beat what was verified
        row = index.locate(units[first:stop])
        if row is not None:  # the usual case: the whole run is one verbatim copy
            best = (first, stop, row)
            continue
        # The run was stitched from different places: grow a span while it stays verbatim,
        # dropping its first unit on a miss (two pointers, linear in the run's length).
        start, end = first, first + index.n
        while end <= stop:
            row = index.locate(units[start:end])
            if row is None:
                start += 1
                end = max(end, start + index.n)
            else:
                if not best or end - start > best[1] - best[0]:
                    best = (start, end, row)
                end += 1
    return best


def verbatim_overlap(predictions: Sequence[str], training_texts: Sequence[str], *, min_words: int = 12,
                     min_chars: int = 30, max_examples: int = 20) -> dict:
    """Find generations that repeat long verbatim spans of the training data.

    A Chinese generation (`metrics.is_chinese`) is measured in characters, any other in words;
    texts are compared casefolded with punctuation ignored.

    Args:
        predictions: the generations.
        training_texts: the texts the model was trained on (e.g. the answers of train.jsonl).
        min_words: shortest span, in words, that counts as a verbatim copy.
        min_chars: the same for Chinese, in characters.
        max_examples: how many of the longest copies to return as examples.

    Returns:
        A JSON-ready dict: min_words, min_chars, n_predictions, n_flagged, share_flagged
        (percent), per_example (longest copied span per generation, in its unit; 0 below the
        threshold), and examples (index, unit, length, span, training_row), longest first.

    Example:
        >>> out = verbatim_overlap(["患者应每日监测空腹血糖并记录"], ["建议患者应每日监测空腹血糖。"], min_chars=8)
        >>> out["examples"][0]["span"], out["examples"][0]["training_row"]
        ('患者应每日监测空腹血糖', 0)
    """
    if min_words < 1 or min_chars < 1:
        raise ValueError(f"min_words and min_chars must be >= 1, got {min_words}, {min_chars}")
    indexes: dict[str, _Index] = {}
    per_example, examples = [], []
    for i, pred in enumerate(predictions):
        unit = "chars" if is_chinese(pred) else "words"
        if unit not in indexes:
            indexes[unit] = _Index(training_texts, unit, min_chars if unit == "chars" else min_words)
        units = _units(pred, unit)
        found = _longest_verified(units, indexes[unit])
        if found is None:
            per_example.append(0)
            continue
        start, end, row = found
        per_example.append(end - start)
        examples.append({"index": i, "unit": unit, "length": end - start,
                         "span": _join(units[start:end], unit), "training_row": row})
    examples.sort(key=lambda e: -e["length"])
    n_flagged = len(examples)
    return {"min_words": min_words, "min_chars": min_chars, "n_predictions": len(predictions),
            "n_flagged": n_flagged,
            "share_flagged": 100.0 * n_flagged / len(predictions) if predictions else 0.0,
            "per_example": per_example, "examples": examples[:max_examples]}


def pii_in_outputs(predictions: Sequence[str], *, max_examples: int = 20) -> dict:
    """Find PII and PII placeholders in generations, with the detectors `prepare` masks with.

    Args:
        predictions: the generations.
        max_examples: how many flagged generations to return as (masked) examples.

    Returns:
        A JSON-ready dict: n_predictions; n_with_pii; by_kind (generations containing each kind);
        n_with_placeholder; placeholders (generations containing each placeholder, e.g.
        "<EMAIL>"); per_example ({"pii": {kind: count}, "placeholders": {placeholder: count}});
        summary (sentences such as "3 generations contain an email address"); examples
        (index, kinds, masked text).

    Example:
        >>> pii_in_outputs(["Mail me at a.b@example.com", "Call <PHONE>"])["summary"]
        ['1 generation contains an email address', '1 generation contains the placeholder <PHONE>']
    """
    masker = PiiMasker()
    per_example, examples = [], []
    by_kind: Counter[str] = Counter()
    by_placeholder: Counter[str] = Counter()
    for i, pred in enumerate(predictions):
        masked, counts = masker(pred)
        placeholders = Counter(_PLACEHOLDER_RE.findall(pred))
        by_kind.update(counts.keys())
        by_placeholder.update(placeholders.keys())
        per_example.append({"pii": dict(counts), "placeholders": dict(placeholders)})
        if counts or placeholders:
            examples.append({"index": i, "kinds": sorted(counts), "placeholders": sorted(placeholders),
                             "masked": masked})
    n_pii = sum(1 for e in per_example if e["pii"])
    n_placeholder = sum(1 for e in per_example if e["placeholders"])
    return {"n_predictions": len(predictions), "n_with_pii": n_pii, "by_kind": dict(by_kind),
            "n_with_placeholder": n_placeholder, "placeholders": dict(by_placeholder),
            "per_example": per_example, "summary": _summary(by_kind, by_placeholder),
            "examples": examples[:max_examples]}


def _summary(by_kind: Counter[str], by_placeholder: Counter[str]) -> list[str]:
    def generations(n: int, verb: str) -> str:
        return f"{n} generation{'s' if n != 1 else ''} {verb if n != 1 else verb + 's'}"
    lines = [f"{generations(n, 'contain')} {_KIND_NAMES.get(kind, kind)}" for kind, n in sorted(by_kind.items())]
    lines += [f"{generations(n, 'contain')} the placeholder {ph}" for ph, n in sorted(by_placeholder.items())]
    return lines
