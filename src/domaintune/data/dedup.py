"""Exact and near-duplicate detection for `domaintune prepare`.

Exact dedup hashes a normalized form of each text (`exact_key`). Near dedup estimates the
Jaccard similarity of character 5-gram sets with MinHash and finds candidates with LSH
(datasketch's `MinHash` and `MinHashLSH`), so the cost per row is constant: no pairwise
comparison. Candidates are confirmed against the stored signatures, so `threshold` means
"estimated Jaccard >= threshold", not "shares an LSH band".

Design choices, each for speed on one core (about 300-char texts):
- Shingles are character k-grams of the normalized text (works for Chinese, no segmenter).
  They are hashed all at once with numpy (32-bit FNV-1a over code points) and turned into a
  signature with datasketch's "affine32" permutations in three numpy calls. Feeding k-grams
  to `MinHash.update_batch` costs one Python call per k-gram (about 3x slower per signature,
  even with `zlib.crc32` as the hash); fed the same k-gram hashes, update_batch gives the
  same signature, which a unit test checks.
- LSH bands are chosen to favour recall (see `_LSH_WEIGHTS`): false candidates are cheap
  because each is verified.
- Signatures live in fixed-size uint32 numpy blocks (4 bytes per permutation per row), not in
  Python MinHash objects; the LSH tables hold only the row number.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import numpy as np
from datasketch import MinHash, MinHashLSH

from domaintune.errors import UserError

__all__ = ["NearDuplicateIndex", "exact_key", "normalize_for_dedup"]

# ASCII bytes that are not letters or digits: the fast path deletes them with bytes.translate.
_ASCII_DROP = bytes(c for c in range(128) if not chr(c).isalnum())
_KEPT_CATEGORIES = frozenset("LNM")  # letters, numbers, and marks (Hindi vowel signs are marks)
_SCHEME = "affine32"  # datasketch's bias-free permutation scheme; uint32 signatures
_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)
_LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights for choosing LSH bands
_BLOCK_ROWS = 4096  # signature rows per numpy block: growth never copies old rows


class _DropTable(dict):
    """str.translate table that deletes every code point outside letters, numbers and marks.

    Filled lazily (one unicodedata lookup per distinct character ever seen) so importing this
    module costs nothing and the table stays as small as the alphabet of the data.
    """

    def __missing__(self, codepoint: int) -> int | None:
        kept = unicodedata.category(chr(codepoint))[0] in _KEPT_CATEGORIES
        self[codepoint] = value = codepoint if kept else None
        return value


_DROP_TABLE = _DropTable()

# Signs, separators and percent signs of numbers stay in the key, so "2.5 mg" != "25 mg", "1-2" !=
# "12" and "-5" != "5"; each has one ASCII form (a full-width "．" or an en dash reads "." or "-").
# The regex marks them with placeholder characters (bytes >= 0x80 in ASCII text, Unicode
# noncharacters otherwise) that the drop pass turns back into their forms. Every pattern starts
# with a character class, so `re` skips to the next digit or sign in C.
_FORMS = ".,:/-+%"
_MARK_FORMS = {**{c: c for c in _FORMS}, "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-",
               "\u2212": "-", "\uff0b": "+", "\uff0c": ",", "\uff0d": "-", "\uff0e": ".", "\uff0f": "/",
               "\uff1a": ":", "\uff05": "%"}
_SEPS = "".join(re.escape(c) for c, form in _MARK_FORMS.items() if form != "%")
_SIGNS = "".join(re.escape(c) for c in "-+\u2212\uff0b\uff0d")   # hyphens (U+2010-2013) are no signs


def _mark_pattern(digit: str, space: str, word: str, seps: str, signs: str, percent: str) -> str:
    # digit + separator(s) + digit (spaces around allowed); digit + "%"; a sign before a digit
    # that does not follow a letter or digit ("-5", "(+3)", not "covid-19").
    between = rf"{space}*(?:[{seps}]{space}*)+(?=[{digit}])"
    return (rf"[{digit}{signs}](?:(?<=[{digit}])(?:{between}|{space}*[{percent}])"
            rf"|(?<=[{signs}])(?<!{word}.)(?=[{digit}]))")


_MARK = re.compile(_mark_pattern(r"\d", r"\s", r"\w", _SEPS, _SIGNS, "%\uff05"))
_PH = {form: chr(0xFDD0 + i) for i, form in enumerate(_FORMS)}
_MARK_TO_PH = {c: _PH[form] for c, form in _MARK_FORMS.items()}
_DROP_PH = _DropTable({ord(ph): ord(form) for form, ph in _PH.items()})
_DROP_KEEPING_MARKS = _DropTable({ord(c): ord(c) for c in _FORMS})   # after NFKC every mark is ASCII
_ASCII_MARK = re.compile(_mark_pattern("0-9", r"[\t-\r\x1c-\x1f ]", "[A-Za-z0-9_]", re.escape(",.:/-+"),
                                       r"\-+", "%").encode("ascii"))
_B_TO_PH = bytes.maketrans(_FORMS.encode(), bytes(range(0x80, 0x80 + len(_FORMS))))
_B_FROM_PH = bytes.maketrans(bytes(range(0x80, 0x80 + len(_FORMS))), _FORMS.encode())
_B_SPACE = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_DIGIT = re.compile(r"\d")


def _ascii_placeholders(m: re.Match[bytes]) -> bytes:
    g = m.group()
    return g[:1] + g[1:].translate(_B_TO_PH, _B_SPACE) if g[:1].isdigit() else g.translate(_B_TO_PH)


def _placeholders(m: re.Match[str]) -> str:
    g = m.group()
    if not g[0].isdecimal():
        return _MARK_TO_PH[g]
    return g[0] + "".join(_MARK_TO_PH[c] for c in g[1:] if c in _MARK_TO_PH)

# A small cache because prepare calls exact_key(text) and then NearDuplicateIndex on the same
# text; the second normalization becomes a dict hit (str hashes are cached on the object).
@functools.lru_cache(maxsize=256)
def normalize_for_dedup(text: str) -> str:
    """Reduce a text to what dedup compares: case-folded letters, digits and marks, and numbers'
    signs and separators.

    Punctuation, whitespace, symbols and control characters are dropped, for every script
    (CJK, Cyrillic, Devanagari, ...), except what changes a number's value: a separator between
    digits (". , : / -", whatever spaces surround it), a "-" or "+" sign before a digit that
    does not follow a letter or digit, and a "%" after a digit. Compatibility forms are unified
    with NFKC, so a full-width "Ａ１" matches "a1".

    Args:
        text: any text.

    Returns:
        The normalized text (possibly empty).

    Example:
        >>> normalize_for_dedup("Hello,  World! 你好，世界。")
        'helloworld你好世界'
        >>> normalize_for_dedup("Take 2.5 mg, -5 °C, 1 - 2 times")
        'take2.5mg-5c1-2times'
    """
    if text.isascii():
        data = text.encode("ascii").lower()
        kept = data.translate(None, _ASCII_DROP)
        if kept.isalpha() or not kept:   # no digit: no number marks (the common, fast case)
            return kept.decode("ascii")
        return _ASCII_MARK.sub(_ascii_placeholders, data).translate(_B_FROM_PH, _ASCII_DROP).decode("ascii")
    folded = text.casefold()
    has_digit = _DIGIT.search(folded) is not None
    norm = _MARK.sub(_placeholders, folded).translate(_DROP_PH) if has_digit else folded.translate(_DROP_TABLE)
    # The quick check is ~0.1 us; full NFKC runs only for text that has compatibility forms.
    # It runs after the drop, so spaces or punctuation between a letter and its combining mark
    # cannot change the result.
    if not unicodedata.is_normalized("NFKC", norm):
        table = _DROP_KEEPING_MARKS if has_digit else _DROP_TABLE
        norm = unicodedata.normalize("NFKC", norm).casefold().translate(table)
    return norm


def exact_key(text: str) -> bytes:
    """Hash a text for exact dedup, ignoring case, punctuation and whitespace.

    Args:
        text: any text.

    Returns:
        The 16-byte BLAKE2b digest of `normalize_for_dedup(text)`.

    Example:
        >>> exact_key("Hello, world!") == exact_key("hello world")
        True
    """
    return hashlib.blake2b(normalize_for_dedup(text).encode("utf-8"), digest_size=16).digest()


def _shingle_hashes(norm: str, k: int) -> np.ndarray:
    """32-bit FNV-1a hash of every character k-gram of `norm` (the whole text if shorter).

    Vectorized over all k-grams at once: hashing each k-gram with a Python call (zlib.crc32
    on a slice) costs about 0.2 us per k-gram, more than the MinHash arithmetic itself.
    """
    codepoints = np.frombuffer(norm.encode("utf-32-le"), dtype="<u4")
    if len(codepoints) == 0:
        return np.array([_FNV_OFFSET], dtype=np.uint32)
    count = max(len(codepoints) - k + 1, 1)
    hashes = codepoints[:count] ^ _FNV_OFFSET
    hashes *= _FNV_PRIME
    for j in range(1, min(k, len(codepoints))):
        hashes ^= codepoints[j:j + count]
        hashes *= _FNV_PRIME
    return hashes


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's "affine32" scheme applies."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


class NearDuplicateIndex:
    """Streaming near-duplicate detector: MinHash signatures plus LSH, linear in rows.

    Args:
        threshold: estimated Jaccard similarity of shingle sets at or above which two texts
            are near-duplicates, in (0, 1].
        num_perm: MinHash permutations (signature length); at least 16.
        shingle_size: characters per shingle (k of the k-grams).
        seed: seed of the MinHash permutations.

    Raises:
        UserError: if `threshold`, `num_perm` or `shingle_size` is out of range.

    Example:
        >>> index = NearDuplicateIndex(threshold=0.8)
        >>> index.check_and_add("a", "The patient was given 5 mg of the drug twice a day.")
        >>> index.check_and_add("b", "The patient was given 5 mg of the drug twice a day!")
        'a'
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, shingle_size: int = 5,
                 seed: int = 1) -> None:
        _check_params(threshold, num_perm, shingle_size)
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # datasketch draws the permutations (odd a, any b: a bijection mod 2^32) once.
        self._probe = MinHash(num_perm, seed=seed, scheme=_SCHEME)
        perm_a, perm_b = self._probe.permutations
        self._perm_a = perm_a
        self._perm_b = perm_b.reshape(-1, 1)
        # Weigh misses over false candidates: every candidate is verified against its stored
        # signature, so a false one costs a comparison while a missed one is a kept duplicate.
        # At 0.85/128 this picks 11 bands of 11 (recall 0.98 at Jaccard 0.9) over 8 of 16 (0.81).
        self._lsh = _make_lsh(threshold, num_perm)
        # The fewest equal signature slots that reach the threshold; ints avoid float drift.
        self._min_equal = int(np.ceil(threshold * num_perm - 1e-9))
        self._blocks: list[np.ndarray] = []
        self._keys: list[str] = []

    def __len__(self) -> int:
        return len(self._keys)

    def query(self, text: str) -> str | None:
        """Find an indexed near-duplicate of `text`.

        Args:
            text: the text to look up.

        Returns:
            The key of the earliest-added indexed text whose estimated Jaccard similarity
            with `text` is at least `threshold`, or None.
        """
        row = self._find(self._signature(text))
        return None if row is None else self._keys[row]

    def add(self, key: str, text: str) -> None:
        """Index `text` under `key` without checking for duplicates.

        Args:
            key: what `query` returns for this text (for example "file.jsonl:12").
            text: the text to index.
        """
        self._insert(key, self._signature(text))

    def check_and_add(self, key: str, text: str) -> str | None:
        """Index `text` unless it near-duplicates an indexed text.

        Args:
            key: what later lookups return for this text.
            text: the text to check and index.

        Returns:
            The key of the earlier near-duplicate (and `text` is not added), or None (and
            `text` is added under `key`).
        """
        signature = self._signature(text)
        row = self._find(signature)
        if row is not None:
            return self._keys[row]
        self._insert(key, signature)
        return None

    def _signature(self, text: str) -> np.ndarray:
        """MinHash signature of `text`, equal to update_batch's over the same k-gram hashes."""
        hashes = _fmix32(_shingle_hashes(normalize_for_dedup(text), self.shingle_size))
        permuted = np.multiply.outer(self._perm_a, hashes)  # (num_perm, k-grams), wraps mod 2^32
        permuted += self._perm_b
        return permuted.min(axis=1)

    def _as_minhash(self, signature: np.ndarray) -> MinHash:
        # MinHashLSH reads only the hash values and copies the bands it keeps, so one MinHash
        # reused for every row spares a constructor (and its range checks) per row.
        self._probe.hashvalues = signature
        return self._probe

    def _find(self, signature: np.ndarray) -> int | None:
        """Earliest indexed row whose signature agrees with `signature` on enough slots."""
        for row in sorted(self._lsh.query(self._as_minhash(signature))):
            block = self._blocks[row // _BLOCK_ROWS]
            if np.count_nonzero(block[row % _BLOCK_ROWS] == signature) >= self._min_equal:
                return row
        return None

    def _insert(self, key: str, signature: np.ndarray) -> None:
        row = len(self._keys)
        if row % _BLOCK_ROWS == 0:
            self._blocks.append(np.empty((_BLOCK_ROWS, self.num_perm), dtype=np.uint32))
        self._blocks[-1][row % _BLOCK_ROWS] = signature
        # Row numbers are unique by construction, so skip datasketch's duplicate-key check.
        self._lsh.insert(row, self._as_minhash(signature), check_duplication=False)
        self._keys.append(key)


def _make_lsh(threshold: float, num_perm: int) -> MinHashLSH:
    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    except ValueError:
        # Near threshold 1 the optimizer picks a single band, which datasketch rejects; two
        # bands still catch every identical signature, and verification does the rest.
        return MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))


def _check_params(threshold: float, num_perm: int, shingle_size: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"near-dedup threshold must be in (0, 1], got {threshold}",
                        hint="use a Jaccard similarity such as 0.85")
    if num_perm < 16:
        raise UserError(f"near-dedup num_perm must be at least 16, got {num_perm}",
                        hint="use 128 (more is slower, fewer is noisier)")
    if shingle_size < 1:
        raise UserError(f"near-dedup shingle_size must be at least 1, got {shingle_size}",
                        hint="use 5 characters")
