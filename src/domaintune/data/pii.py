"""PII masking for `domaintune prepare`: e-mail addresses, phone numbers, Chinese resident ID
numbers, bank cards and IP addresses become placeholders such as ``<PHONE>``.

Candidates are found by regex and then validated in Python (ISO 7064 checksum and birth date for
ID numbers, Luhn for cards, octet range for IPv4, `ipaddress` for IPv6), so dates, years, ICD
codes, prices and version numbers stay. All digit-based kinds share one compiled regex whose first
item is a character class, so `re` skips ahead to the next digit, ``+`` or ``(`` in C: a typical
300-character text costs a few µs, and a text without ``@`` or digits one character-class scan.

    >>> PiiMasker()("请拨打13812345678联系")
    ('请拨打<PHONE>联系', Counter({'phone': 1}))
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from domaintune.errors import UserError

PII_KINDS = ("email", "phone", "cn_id", "bank_card", "ip")
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "cn_id": "<ID_CARD>",
                "bank_card": "<BANK_CARD>", "ip": "<IP>"}
# When spans overlap, the kind listed first wins.
_PRIORITY = ("email", "cn_id", "bank_card", "phone", "ip")

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])")

# Each digit-based kind is written as what follows its first character, one of [0-9+(] that is
# not inside a digit run; a lookbehind right after it says which first characters the kind takes.
# Written this way the combined pattern starts with a plain character class, the one shape for
# which `re` scans ahead in C instead of trying every position (a leading lookbehind costs ~3x).
_FIRST = r"[0-9+(](?<![0-9][0-9])"
# In the combined pattern, a digit must be followed by 6 more digits (single spaces or dashes
# between them allowed) or by two dotted octets before any kind is tried: every kind starting
# with a digit needs that, and most numbers in prose (54-year-old, 150/90, 2.3 mg) stop here.
_GATE = r"(?:(?<=[+(])|(?=(?:[ -]?[0-9]){6}|[0-9]{0,2}\.[0-9]{1,3}\.))"
_REST = {
    # 6-digit area code, YYYYMMDD birth date, 3-digit sequence, check digit or X.
    "cn_id": r"(?<=[1-8])[0-9]{5}(?:18|19|20)[0-9]{2}[01][0-9][0-3][0-9][0-9]{3}[0-9Xx](?![0-9])",
    # 13-19 digits, contiguous or grouped by one space or dash as cards are printed: 4 4 4 4,
    # 4 4 4 4 3, 4 6 5 (length checked in Python).
    "bank_card": r"(?<=[0-9])(?:[0-9]{12,18}(?![0-9])"
                 r"|(?<![0-9][ -][0-9])[0-9]{3}(?P<sep>[ -])"
                 r"(?:[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,4}(?:(?P=sep)[0-9]{1,4})?"
                 r"|[0-9]{6}(?P=sep)[0-9]{4,5})(?![0-9]|[ -][0-9]))",
    "phone": "|".join((
        # +CC international, e.g. +86 138 1234 5678, +1 (555) 123-4567, +44 20 7946 0958.
        r"(?<=\+)(?<![0-9+]\+)[1-9][0-9]{0,3}(?:[ -]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,5}(?![0-9])",
        # Chinese mobile with optional 86 / 0086 prefix: 13812345678, 138-1234-5678, 86 138 ...
        r"(?:(?<=8)6[ -]?1|(?<=0)086[ -]?1|(?<=1))[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}(?![0-9])",
        # Chinese landline with area code: 010-12345678, 0755 1234567, (0755)1234567.
        r"(?<=0)[1-9][0-9]{1,2}[ -][1-9][0-9]{6,7}(?![0-9])",
        r"(?<=\()0[1-9][0-9]{1,2}\) ?[1-9][0-9]{6,7}(?![0-9])",
        # North American: (555) 123-4567, 555-123-4567, 1-800-555-1234.
        r"(?<=\()[2-9][0-9]{2}\) ?[0-9]{3}-[0-9]{4}(?![0-9])",
        r"(?<=[2-9])[0-9]{2}-[0-9]{3}-[0-9]{4}(?![0-9]|-[0-9])",
        r"(?<=1)-[2-9][0-9]{2}-[0-9]{3}-[0-9]{4}(?![0-9]|-[0-9])",
    )),
    # IPv4 (octets checked in Python); not inside a longer dotted number or after a letter (v1.2.3.4).
    "ip": r"(?<=[0-9])(?<![A-Za-z.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])",
}
_DIGIT_KINDS = ("cn_id", "bank_card", "phone", "ip")  # priority order, as in _PRIORITY
_DIGITS = re.compile(_FIRST + _GATE + "(?:" + "|".join(f"(?P<{k}>{_REST[k]})" for k in _DIGIT_KINDS) + ")")
_ONE_KIND = {k: re.compile(_FIRST + f"(?:{_REST[k]})") for k in _DIGIT_KINDS}
_HAS_DIGIT = re.compile("[0-9]")
# IPv6 candidates, full or compressed (validated by `ipaddress`); at least two colons, so a time
# like 12:30 is never a candidate, and ``std::vector`` fails the no-letter-before rule.
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z]|:[0-9A-Fa-f]|\.[0-9])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


class _Span(NamedTuple):
    start: int
    end: int
    kind: str


class PiiMasker:
    """Replace PII in a text by placeholders and count what was masked.

    Args:
        kinds: the kinds to mask, any of `PII_KINDS`.

    Raises:
        UserError: a kind is not in `PII_KINDS`.

    Example:
        >>> mask = PiiMasker(["email", "phone"])
        >>> mask("联系 zhang.san@example.com 或 138-1234-5678，2024-01-15 复诊")
        ('联系 <EMAIL> 或 <PHONE>，2024-01-15 复诊', Counter({'email': 1, 'phone': 1}))
    """

    def __init__(self, kinds: Iterable[str] = PII_KINDS) -> None:
        self.kinds = frozenset(kinds)
        unknown = sorted(self.kinds - set(PII_KINDS))
        if unknown:
            raise UserError(f"unknown PII kind(s) {unknown}", hint=f"use any of {list(PII_KINDS)}")
        self._digit_kinds = [k for k in _DIGIT_KINDS if k in self.kinds]

    def __call__(self, text: str) -> tuple[str, Counter[str]]:
        """Return the masked text and how many spans of each kind were masked."""
        counts: Counter[str] = Counter()
        while True:
            spans = self._spans(text)
            if not spans:
                return text, counts
            # Masking can expose a candidate that an overlapping winner had hidden ("fe80::1a@b.cn":
            # the e-mail takes "1a", then "fe80::" is a valid IPv6), so mask again until nothing
            # changes; that keeps masking idempotent. Each pass removes digits or "@", so it ends.
            text = _apply(text, spans)
            counts.update(span.kind for span in spans)

    def mask_values(self, value: Any) -> tuple[Any, Counter[str]]:
        """Mask every string leaf of a JSON-like value (dicts and lists, at any depth), such as a
        record's metadata; an integer whose digits are personal data (a phone number stored as a
        number) becomes its placeholder string.

        Args:
            value: a JSON-like value; it is not modified.

        Returns:
            The masked copy and how many spans of each kind were masked.

        Raises:
            RecursionError: `value` is nested deeper than Python's recursion limit.

        Example:
            >>> PiiMasker().mask_values({"contact": ["a@b.cn"], "age": 54})
            ({'contact': ['<EMAIL>'], 'age': 54}, Counter({'email': 1}))
        """
        counts: Counter[str] = Counter()
        return self._mask_value(value, counts), counts

    def _mask_value(self, value: Any, counts: Counter[str]) -> Any:
        if isinstance(value, str):
            masked, found = self(value)
            counts.update(found)
            return masked
        if isinstance(value, dict):
            return {k: self._mask_value(v, counts) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask_value(v, counts) for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            masked, found = self(str(value))
            counts.update(found)
            return masked if found else value
        return value

    def _spans(self, text: str) -> list[_Span]:
        has_at = "@" in text
        # Every kind but e-mail needs a digit (IPv6 without one is not masked, see below).
        has_digit = _HAS_DIGIT.search(text) is not None
        if not (has_at or has_digit):
            return []
        spans: list[_Span] = []
        if has_at and "email" in self.kinds:
            spans += [_Span(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
        if has_digit and self._digit_kinds:
            spans += self._digit_spans(text)
        if has_digit and "ip" in self.kinds and ("::" in text or text.count(":") >= 7):
            spans += _ipv6_spans(text)
        return _resolve(spans) if len(spans) > 1 else spans

    def _digit_spans(self, text: str) -> list[_Span]:
        spans = []
        pos = 0
        while (m := _DIGITS.search(text, pos)) is not None:
            span = self._classify(text, m)
            if span is None:
                # Nothing valid starts here; a shorter candidate may start one character on.
                pos = m.start() + 1
            else:
                spans.append(span)
                pos = span.end
        return spans

    def _classify(self, text: str, m: re.Match[str]) -> _Span | None:
        start = m.start()
        # The combined regex reports the first kind whose shape fits; if that one is not valid
        # (an 18-digit number with a bad checksum), the later kinds get their turn here.
        first = next(k for k in _DIGIT_KINDS if m.group(k) is not None)
        for kind in _DIGIT_KINDS[_DIGIT_KINDS.index(first):]:
            if kind not in self._digit_kinds:
                continue
            cand = m if kind == first else _ONE_KIND[kind].match(text, start)
            if cand is not None and _VALID[kind](cand.group()):
                if kind == "phone" and text[start] == "+":
                    # "+" then an ID or card number: those outrank phone on the same digits.
                    return self._outranking(text, start + 1) or _Span(start, cand.end(), kind)
                return _Span(start, cand.end(), kind)
        return None

    def _outranking(self, text: str, start: int) -> _Span | None:
        for kind in ("cn_id", "bank_card"):
            cand = _ONE_KIND[kind].match(text, start) if kind in self.kinds else None
            if cand is not None and _VALID[kind](cand.group()):
                return _Span(start, cand.end(), kind)
        return None


def _valid_cn_id(s: str) -> bool:
    try:
        datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    total = sum(int(ch) * w for ch, w in zip(s, _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17].upper()


def _valid_card(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _valid_phone(s: str) -> bool:
    if not s.startswith("+"):
        return True  # the shapes above are specific enough on their own
    digits = sum(ch.isdigit() for ch in s)
    return 8 <= digits <= 15 and s.count("(") == s.count(")")  # E.164 allows at most 15 digits


def _valid_ipv4(s: str) -> bool:
    # An octet with a leading zero (01) reads as part of a date or version, not an address.
    return all(int(octet) <= 255 and (octet == "0" or octet[0] != "0") for octet in s.split("."))


_VALID = {"cn_id": _valid_cn_id, "bank_card": _valid_card, "phone": _valid_phone, "ip": _valid_ipv4}


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check used by payment cards.

    Args:
        digits: only the characters 0-9.

    Returns:
        True if the Luhn checksum is 0.

    Example:
        >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
        (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ipv6_spans(text: str) -> list[_Span]:
    spans = []
    for m in _IPV6.finditer(text):
        cand = m.group()
        # A bare "::" or a code path like a::b has no digit; those are not worth masking.
        if not any(ch.isdigit() for ch in cand):
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        spans.append(_Span(m.start(), m.end(), "ip"))
    return spans


def _resolve(spans: list[_Span]) -> list[_Span]:
    """Keep the spans that win by priority; the result is sorted by position."""
    rank = {k: i for i, k in enumerate(_PRIORITY)}
    kept: list[_Span] = []
    for span in sorted(spans, key=lambda s: (rank[s.kind], s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept)


def _apply(text: str, spans: list[_Span]) -> str:
    parts = []
    pos = 0
    for span in spans:
        parts += (text[pos:span.start], PLACEHOLDERS[span.kind])
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)
