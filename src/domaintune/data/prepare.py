"""The prepare pipeline: raw files -> clean, deduplicated, mixed and split JSONL, losing nothing.

Rows stream through in batches (bounded memory): parse and clean (`process.py`), count tokens with
the model's tokenizer and template, drop exact duplicates, eval-set copies and near-duplicates, and
spill what is kept to disk. Then the kept rows are split (stratified) and the training split is
mixed to the asked source ratios. Dedup runs before splitting, so no near-copy straddles train and
test; mixing runs after it, so up-sampled copies never leak into val/test. Everything is written
into a temporary sibling of the output folder that replaces it only after the ledger check
(`staging.py`), so a failed run leaves the previous outputs whole; a full disk or a file-size
limit is one `UserError`.

    python -m domaintune prepare data.jsonl -o prepared/
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from domaintune.config import PrepareConfig
from domaintune.data.chunk import chunk_by_tokens
from domaintune.data.dedup import NearDuplicateIndex, exact_key
from domaintune.data.formats import RecordError, to_canonical
from domaintune.data.mix import plan_mix, sample_rows
from domaintune.data.process import Rejected, RowProcessor
from domaintune.data.readers import RawRow, read_rows
from domaintune.data.rejects import Ledger, Origin, RejectSink
from domaintune.data.report import build_report, write_report
from domaintune.data.schema import record_text
from domaintune.data.split import assign_splits
from domaintune.data.staging import staged_folder
from domaintune.errors import UserError

TokenCounter = Callable[[Sequence[dict]], list[int]]
SPLITS = ("train", "val", "test")
# What prepare writes into its output folder; anything else found there is carried over.
OWNED = frozenset({*(f"{s}.jsonl" for s in SPLITS), "rejects.jsonl", "duplicates.jsonl", "report.json",
                   "report.md", ".work"})
BATCH = 2048
# Tokenizing is the costliest step (~1M tokens/s on 2 cores), so after the first EXACT_ROWS records
# only every SAMPLE_EVERY-th is counted for the length percentiles. Rows that could break
# max_tokens are always counted, so the limit stays exact: a byte-level tokenizer never makes more
# tokens than the rendered text has bytes, and the template adds at most TEMPLATE_BYTES.
EXACT_ROWS = 20_000
SAMPLE_EVERY = 10
TEMPLATE_BYTES = (256, 48)   # fixed (default system prompt) + per message


@dataclass
class Kept:
    """Per kept row, what finalizing needs; the record itself waits in the spill file."""

    source: list[str] = field(default_factory=list)
    stratum: list[str | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    records_seen: int = 0


@dataclass
class Deduper:
    """Exact, contamination and near-duplicate checks, in that order (first seen is kept)."""

    exact: bool
    near: NearDuplicateIndex | None
    against_exact: dict[bytes, str]
    against_near: NearDuplicateIndex | None
    seen: dict[bytes, str] = field(default_factory=dict)

    def check(self, key: str, text: str) -> tuple[str, str] | None:
        digest = exact_key(text)
        if digest in self.against_exact:
            return "contamination", self.against_exact[digest]
        if self.exact and digest in self.seen:
            return "exact", self.seen[digest]
        if self.against_near is not None and (hit := self.against_near.query(text)) is not None:
            return "contamination", hit
        if self.near is not None and (hit := self.near.check_and_add(key, text)) is not None:
            return "near", hit
        self.seen.setdefault(digest, key)
        return None


def prepare_data(cfg: PrepareConfig, processor: RowProcessor, count_tokens: TokenCounter | None = None,
                 tokenizer: Any = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the whole prepare pipeline and write its files into `cfg.output_dir`.

    Args:
        cfg: the recipe's `prepare` section.
        processor: the per-row stage (parse, clean, mask, guard, validate).
        count_tokens: exact token length of each chat record with the model's template, or None.
        tokenizer: the model tokenizer, used to cut long raw texts into windows (None: words).
        progress: called with the number of input bytes consumed since the last call.

    Returns:
        The report (also written to report.json and report.md).

    Raises:
        UserError: bad settings, an unreadable input, or outputs that cannot be written (full
            disk, file-size limit); the previous outputs are then left as they were.
    """
    started = time.perf_counter()
    _check_mix_sources(cfg)
    processor = _with_metadata_policy(processor, cfg)
    try:
        with staged_folder(Path(cfg.output_dir), OWNED) as stage:
            return _prepare_into(stage, cfg, processor, count_tokens, tokenizer, progress, started)
    except OSError as err:
        raise _write_error(err, cfg.output_dir) from None


def _with_metadata_policy(processor: RowProcessor, cfg: PrepareConfig) -> RowProcessor:
    keep = tuple(f for f in (cfg.label_field, cfg.split.stratify_by) if f)
    if (processor.metadata, processor.keep_metadata) == (cfg.pii.metadata, keep):
        return processor
    return dataclasses.replace(processor, metadata=cfg.pii.metadata, keep_metadata=keep)


def _write_error(err: OSError, out: str) -> UserError:
    hints = {errno.ENOSPC: "free space on that disk, or write to another disk with -o",
             errno.EDQUOT: "free space within your disk quota, or write to another disk with -o",
             errno.EFBIG: "a file grew past the file-size limit: raise it (`ulimit -f unlimited`) or use "
                          "a filesystem that allows larger files",
             errno.EACCES: "make the folder writable, or choose another with -o",
             errno.EROFS: "the disk is read-only: choose another folder with -o"}
    where = f" ({err.filename})" if err.filename else ""
    return UserError(f"cannot write the prepared data{where}: {err.strerror or err}", file=out,
                     hint=hints.get(err.errno, "check the output folder and its disk, or choose another with -o"))


def _prepare_into(out: Path, cfg: PrepareConfig, processor: RowProcessor, count_tokens: TokenCounter | None,
                  tokenizer: Any, progress: Callable[[int], None] | None, started: float) -> dict[str, Any]:
    work = out / ".work"
    work.mkdir()
    ledger, kept, lengths_over = Ledger(), Kept(), 0
    sink = RejectSink(out, ledger, redact=None if cfg.rejects_raw else processor.redact)
    dedup = _build_deduper(cfg)
    try:
        with open(work / "kept.jsonl", "w", encoding="utf-8", newline="\n") as spill:
            for batch in _batches(_rows(cfg, ledger, progress), BATCH):
                lengths_over += _consume(batch, cfg, processor, count_tokens, tokenizer, dedup, sink, kept, spill)
        split_of = assign_splits(kept.stratum, cfg.split.ratios, cfg.seed)
        mix = _mix_plan(cfg, kept, split_of)
        copies = mix.pop("copies")
        written = _write_outputs(out, work / "kept.jsonl", kept, split_of, copies, sink)
    finally:
        sink.close()
    ledger.check()
    shutil.rmtree(work, ignore_errors=True)
    labels = Counter(label for label, split, n in zip(kept.label, split_of, copies) for _ in range(n)
                     if split == "train")
    report = build_report(cfg, ledger, processor.stats, kept.tokens, lengths_over, mix, written, labels,
                          time.perf_counter() - started, has_tokenizer=count_tokens is not None,
                          sampled=count_tokens is not None and kept.records_seen > EXACT_ROWS)
    write_report(report, out)
    return report


def _check_mix_sources(cfg: PrepareConfig) -> None:
    names = {spec.source for spec in cfg.inputs}
    unknown = sorted(set(cfg.mix.ratios) - names)
    if unknown:
        raise UserError(f"mix ratio for unknown source(s) {unknown}; inputs are {sorted(names)}",
                        hint="name inputs as --input NAME=FILE and use those names in --mix")


def _build_deduper(cfg: PrepareConfig) -> Deduper:
    d = cfg.dedup
    make = lambda: NearDuplicateIndex(d.threshold, d.num_perm, d.shingle_size, seed=1)  # noqa: E731
    against_exact: dict[bytes, str] = {}
    against_near = make() if d.against else None
    for path in d.against:
        for row in read_rows(path, source="against"):
            text = _eval_text(row)
            if text:
                key = f"{path}:{row.line}"
                against_exact.setdefault(exact_key(text), key)
                against_near.add(key, text)
    return Deduper(d.exact, make() if d.near else None, against_exact, against_near)


def _eval_text(row: RawRow) -> str | None:
    if row.obj is None:
        return None
    try:
        return record_text(to_canonical(row.obj))
    except RecordError:
        return None


def _rows(cfg: PrepareConfig, ledger: Ledger, progress: Callable[[int], None] | None) -> Iterator[RawRow]:
    if not cfg.inputs:
        raise UserError("no input files", hint="give files: domaintune prepare data.jsonl -o out/")
    for spec in cfg.inputs:
        source = spec.source
        tally = partial(ledger.count_file, source)
        for row in read_rows(spec.path, source, spec.file_type, spec.columns, spec.text_unit, tally=tally):
            ledger.count_row(source, row.file, row.line, row.last_line)
            if progress is not None:
                progress(len(row.raw) + 1)
            yield row


def _batches(items: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    batch: list[RawRow] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _consume(batch: list[RawRow], cfg: PrepareConfig, processor: RowProcessor, count_tokens: TokenCounter | None,
             tokenizer: Any, dedup: Deduper, sink: RejectSink, kept: Kept, spill) -> int:
    """Process one batch; returns how many chat rows were rejected as too long."""
    records: list[tuple[Origin, dict, str]] = []
    for row in batch:
        origin = Origin(row.source, row.file, row.line)
        try:
            record = processor(row)
        except Rejected as err:
            sink.reject(origin, err.reason, err.detail, raw=row.raw)
            continue
        records.extend(_expand(origin, record, cfg, tokenizer, sink.ledger))
    lengths = _lengths(records, count_tokens, cfg.max_tokens, kept.records_seen)
    kept.records_seen += len(records)
    too_long = 0
    for (origin, record, text), n_tokens in zip(records, lengths):
        if cfg.max_tokens and "messages" in record and n_tokens is not None and n_tokens > cfg.max_tokens:
            too_long += 1
            sink.reject(origin, "too_long", f"{n_tokens} tokens > max_tokens {cfg.max_tokens}", record=record)
            continue
        hit = dedup.check(origin.key, text)
        if hit is not None:
            sink.duplicate(origin, hit[0], hit[1], record)
            continue
        record["metadata"]["origin"] = origin.as_dict()
        spill.write(json.dumps(record, ensure_ascii=False) + "\n")
        kept.source.append(origin.source)
        kept.stratum.append(_stratum(record, origin, cfg.split.stratify_by))
        if n_tokens is not None:
            kept.tokens.append(n_tokens)
        if cfg.label_field:
            value = record["metadata"].get(cfg.label_field)
            kept.label.append(None if value is None else str(value))
    return too_long


def _expand(origin: Origin, record: dict, cfg: PrepareConfig, tokenizer: Any,
            ledger: Ledger) -> list[tuple[Origin, dict, str]]:
    """Long raw texts become token windows; chat records pass through as one."""
    if "text" not in record:
        return [(origin, record, record_text(record))]
    pieces = chunk_by_tokens(record["text"], tokenizer, cfg.chunk.max_tokens, cfg.chunk.overlap)
    if len(pieces) == 1:
        return [(origin, record, record["text"])]
    ledger.chunks_added[origin.source] += len(pieces) - 1
    return [(Origin(origin.source, origin.file, origin.line, i), {"text": piece, "metadata": dict(record["metadata"])},
             piece) for i, piece in enumerate(pieces)]


def _lengths(records: list[tuple[Origin, dict, str]], count_tokens: TokenCounter | None, max_tokens: int,
             seen: int) -> list[int | None]:
    """Token length of each record that must or should be counted; None for the others."""
    if count_tokens is None:
        return [len(text.split()) for _, _, text in records]
    pick = [i for i, (_, record, text) in enumerate(records)
            if seen + i < EXACT_ROWS or (seen + i) % SAMPLE_EVERY == 0 or _may_exceed(record, text, max_tokens)]
    lengths: list[int | None] = [None] * len(records)
    for i, n in zip(pick, count_tokens([records[i][1] for i in pick])):
        lengths[i] = n
    return lengths


def _may_exceed(record: dict, text: str, max_tokens: int) -> bool:
    if not max_tokens or "messages" not in record:
        return False
    fixed, per_message = TEMPLATE_BYTES
    return len(text.encode("utf-8")) + fixed + per_message * len(record["messages"]) > max_tokens


def _stratum(record: dict, origin: Origin, field_name: str | None) -> str | None:
    if field_name is None:
        return origin.source
    value = record["metadata"].get(field_name)
    return None if value is None else str(value)


def _mix_plan(cfg: PrepareConfig, kept: Kept, split_of: list[str]) -> dict[str, Any]:
    """How many copies of each kept row go to its split (0: left out by down-sampling)."""
    copies = [1] * len(split_of)
    train_by_source: dict[str, list[int]] = {}
    for i, (source, split) in enumerate(zip(kept.source, split_of)):
        if split == "train":
            train_by_source.setdefault(source, []).append(i)
    available = {s: len(rows) for s, rows in train_by_source.items()}
    if not cfg.mix.ratios:
        return {"copies": copies, "asked": {}, "available": available, "actual": available}
    targets = plan_mix(available, cfg.mix.ratios, cfg.mix.strategy, cfg.mix.total)
    for source, rows in train_by_source.items():
        for i in rows:
            copies[i] = 0
        for j in sample_rows(len(rows), targets.get(source, 0), f"{cfg.seed}:{source}"):
            copies[rows[j]] += 1
    return {"copies": copies, "asked": dict(cfg.mix.ratios), "available": available, "actual": targets,
            "strategy": cfg.mix.strategy}


def _write_outputs(out: Path, spill_path: Path, kept: Kept, split_of: list[str], copies: list[int],
                   sink: RejectSink) -> Counter[str]:
    written: Counter[str] = Counter()
    files = {name: open(out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") for name in SPLITS}
    try:
        with open(spill_path, encoding="utf-8", newline="\n") as spill:   # lines end at "\n" only
            for i, line in enumerate(spill):
                split, n = split_of[i], copies[i]
                if n == 0:
                    record = json.loads(line)
                    origin = Origin(**record["metadata"]["origin"])
                    sink.reject(origin, "mix_downsampled", "left out by down-sampling to the mix ratios", record=record)
                    continue
                files[split].write(line * n)
                written[split] += n
                sink.ledger.output[(kept.source[i], split)] += 1
    finally:
        for f in files.values():
            f.close()
    return written
