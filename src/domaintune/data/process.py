"""One raw row -> zero or more clean canonical records, or a reject reason.

The per-row stage of `prepare`: parse the record shape, keep the last K turns, clean the text, mask
personal data, normalize terminology, guard against role injection and validate. Everything that
needs the whole data set (token lengths, dedup, splitting, mixing) lives in `prepare.py`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from domaintune.data.clean import Cleaner, CleanRules
from domaintune.data.formats import RecordError, to_canonical
from domaintune.data.injection import InjectionGuard
from domaintune.data.pii import PiiMasker
from domaintune.data.readers import RawRow
from domaintune.data.schema import keep_last_turns, map_contents, validate_record
from domaintune.data.terms import TermDict


class Rejected(Exception):
    """A row that cannot be used; `reason` is a code from `schema.REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class TextStats:
    """What the text transforms did, summed over all rows (for the report)."""

    pii: Counter[str] = field(default_factory=Counter)
    terms: Counter[tuple[str, str]] = field(default_factory=Counter)
    injection_tokens: Counter[str] = field(default_factory=Counter)
    injection_rows: int = 0


@dataclass
class RowProcessor:
    """Turns a `RawRow` into a clean canonical record (or raises `Rejected`).

    Args:
        record_format: "auto" or a shape from `formats.RECORD_FORMATS`.
        clean: cleaning rules, or None to skip cleaning.
        pii_kinds: kinds of personal data to mask (empty: no masking).
        terms: a terminology dictionary, or None.
        injection: "escape" or "reject" for content holding chat control tokens.
        extra_control_tokens: the model tokenizer's own special tokens, guarded too.
        last_turns: keep only the last K exchanges (0: all).
        metadata: what happens to the extra input fields kept in each record's metadata: "mask"
            their values like contents (with `pii_kinds`), or "drop" them.
        keep_metadata: fields kept under "drop" (the label and stratify fields), masked.
    """

    record_format: str = "auto"
    clean: CleanRules | None = field(default_factory=CleanRules)
    pii_kinds: tuple[str, ...] = ("email", "phone", "cn_id", "bank_card", "ip")
    terms: TermDict | None = None
    injection: str = "escape"
    extra_control_tokens: tuple[str, ...] = ()
    last_turns: int = 0
    metadata: str = "mask"
    keep_metadata: tuple[str, ...] = ()
    stats: TextStats = field(default_factory=TextStats)

    def __post_init__(self) -> None:
        self._cleaner = Cleaner(self.clean) if self.clean is not None else None
        self._masker = PiiMasker(self.pii_kinds) if self.pii_kinds else None
        self._guard = InjectionGuard(self.injection, self.extra_control_tokens)

    def __call__(self, row: RawRow) -> dict:
        if row.obj is None:
            raise Rejected(row.error or "invalid_json", row.detail or f"could not parse the row ({row.error})")
        try:
            record = to_canonical(row.obj, self.record_format)
        except RecordError as err:
            raise Rejected(err.reason, err.detail) from None
        if self.last_turns and "messages" in record:
            record = keep_last_turns(record, self.last_turns)
        record["metadata"] = self._metadata(record["metadata"])
        found: list[str] = []
        record = map_contents(record, self._transform_fn(found))
        if found:
            self._count_injection(found)
        problem = validate_record(record)
        if problem is not None:
            raise Rejected(*problem)
        return record

    def redact(self, text: str) -> str:
        """`text` with personal data masked (not counted in the stats): for rejects and logs."""
        return self._masker(text)[0] if self._masker is not None else text

    def _metadata(self, metadata: dict) -> dict:
        if self.metadata == "drop":
            metadata = {k: v for k, v in metadata.items() if k in self.keep_metadata}
        if self._masker is None or not metadata:
            return metadata
        try:
            metadata, counts = self._masker.mask_values(metadata)
        except RecursionError:
            raise Rejected("bad_field", "metadata is nested too deeply to be checked for personal data") from None
        self.stats.pii.update(counts)
        return metadata

    def _transform_fn(self, found: list[str]) -> Callable[[str, str], str]:
        def transform(role: str, text: str) -> str:
            if self._cleaner is not None:
                text = self._cleaner(text)
            if self._masker is not None:
                text, counts = self._masker(text)
                if counts:
                    self.stats.pii.update(counts)
            if self.terms is not None:
                text, seen = self.terms.normalize(text)
                if seen:
                    self.stats.terms.update(seen)
            text, tokens = self._guard(role, text)
            found.extend(tokens)
            return text
        return transform

    def _count_injection(self, found: list[str]) -> None:
        self.stats.injection_rows += 1
        self.stats.injection_tokens.update(found)
        if self.injection == "reject":
            raise Rejected("role_injection", f"content holds chat control tokens {sorted(set(found))}")
