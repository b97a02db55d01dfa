"""Where rows that do not reach the output go, each with its origin and a reason.

`rejects.jsonl` holds rows that failed (bad JSON, wrong roles, too long, ...) or were left out by
mixing; `duplicates.jsonl` names each dropped duplicate and the row it repeats. Together with the
split files they account for every input row, and the rows account for every physical line of
every input file, which `Ledger.check` asserts. Raw text in the rejects file goes through
`redact` (PII masking, unless the recipe asks for raw rejects).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from domaintune.data.rows import FileTally


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
class _FileLines:
    """The lines of one input file that rows covered so far (rows arrive in line order)."""

    covered: int = 0
    last: int = 0
    tally: FileTally | None = None


@dataclass
class Ledger:
    """Counts of every row's fate, per source; the conservation rules live here and only here."""

    rows_in: Counter[str] = field(default_factory=Counter)
    chunks_added: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)      # (source, reason)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)    # (source, kind)
    output: Counter[tuple[str, str]] = field(default_factory=Counter)        # (source, split), unique rows
    files: dict[tuple[str, str], _FileLines] = field(default_factory=dict)   # (source, file)

    def count_row(self, source: str, file: str, first: int, last: int) -> None:
        """One input row of `source`, spanning lines `first`..`last` of `file`."""
        self.rows_in[source] += 1
        lines = self.files.get((source, file)) or self.files.setdefault((source, file), _FileLines())
        lines.covered += max(0, last - max(first, lines.last + 1) + 1)   # JSON rows may share a line
        lines.last = max(lines.last, last)

    def count_file(self, source: str, tally: FileTally) -> None:
        """The physical size of an input file, once it has been read to its end."""
        self.files.setdefault((source, tally.file), _FileLines()).tally = tally

    def check(self) -> None:
        """Raise when a file's lines != lines in rows + skipped lines, or when input rows (plus
        chunks) != output + rejected + duplicates for any source."""
        for (_, file), lines in self.files.items():
            t = lines.tally
            if t is not None and lines.covered + t.skipped != t.units:
                raise RuntimeError(f"line accounting broken for {file}: {t.units} lines, {t.skipped} skipped "
                                   f"(blank, header), {lines.covered} in rows")
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

    def __init__(self, out_dir: Path, ledger: Ledger, redact: Callable[[str], str] | None = None) -> None:
        self._rejects: IO[str] = open(out_dir / "rejects.jsonl", "w", encoding="utf-8", newline="\n")
        self._dups: IO[str] = open(out_dir / "duplicates.jsonl", "w", encoding="utf-8", newline="\n")
        self.ledger = ledger
        self._redact = redact

    def reject(self, origin: Origin, reason: str, detail: str, raw: str | None = None,
               record: dict | None = None) -> None:
        """Write one reject; `raw` (the input text) and `detail` go through `redact`. A `record` has
        been through the pipeline already (masked), so it is written as it is."""
        if self._redact is not None:
            detail = self._redact(detail)
            raw = None if raw is None else self._redact(raw)
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
