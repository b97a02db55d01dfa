"""Where rows that do not reach the output go, each with its origin and a reason.

`rejects.jsonl` holds rows that failed (bad JSON, wrong roles, too long, ...) or were left out by
mixing; `duplicates.jsonl` names each dropped duplicate and the row it repeats. Together with the
split files they account for every input row, which `Ledger.check` asserts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: its source name, file and 1-based line (and chunk, for long texts)."""

    source: str
    file: str
    line: int
    chunk: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "file": self.file, "line": self.line}
        if self.chunk is not None:
            out["chunk"] = self.chunk
        return out

    @property
    def key(self) -> str:
        suffix = f"#{self.chunk}" if self.chunk is not None else ""
        return f"{self.source}:{self.file}:{self.line}{suffix}"


@dataclass
class Ledger:
    """Counts of every row's fate, per source; the conservation rule lives here and only here."""

    rows_in: Counter[str] = field(default_factory=Counter)
    chunks_added: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)      # (source, reason)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)    # (source, kind)
    output: Counter[tuple[str, str]] = field(default_factory=Counter)        # (source, split), unique rows

    def check(self) -> None:
        """Raise when input rows (plus chunks) != output + rejected + duplicates for any source."""
        for source in self.rows_in:
            units = self.rows_in[source] + self.chunks_added[source]
            accounted = (_sum_for(self.output, source) + _sum_for(self.rejected, source)
                         + _sum_for(self.duplicates, source))
            if units != accounted:
                raise RuntimeError(f"row accounting broken for source '{source}': {units} in, {accounted} accounted")


def _sum_for(counter: Counter[tuple[str, str]], source: str) -> int:
    return sum(n for (src, _), n in counter.items() if src == source)


class RejectSink:
    """Writes rejects.jsonl and duplicates.jsonl and counts into a `Ledger`."""

    def __init__(self, out_dir: Path, ledger: Ledger) -> None:
        self._rejects: IO[str] = open(out_dir / "rejects.jsonl", "w", encoding="utf-8")
        self._dups: IO[str] = open(out_dir / "duplicates.jsonl", "w", encoding="utf-8")
        self.ledger = ledger

    def reject(self, origin: Origin, reason: str, detail: str, raw: str | None = None,
               record: dict | None = None) -> None:
        row: dict[str, Any] = {**origin.as_dict(), "reason": reason, "detail": detail}
        if raw is not None:
            row["raw"] = raw
        if record is not None:
            row["record"] = record
        self._rejects.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.ledger.rejected[(origin.source, reason)] += 1

    def duplicate(self, origin: Origin, kind: str, of: str, record: dict) -> None:
        row = {**origin.as_dict(), "kind": kind, "duplicate_of": of, "record": record}
        self._dups.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.ledger.duplicates[(origin.source, kind)] += 1

    def close(self) -> None:
        self._rejects.close()
        self._dups.close()
