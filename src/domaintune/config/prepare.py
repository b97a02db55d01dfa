"""The `prepare:` section: inputs, cleaning, PII masking, dedup, mixing, splitting and chunking.

    cfg = PrepareConfig(inputs=[InputSpec(path="cases.jsonl")], split=SplitConfig(train=0.9, val=0.1, test=0.0))
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from domaintune.config.base import Section


class InputSpec(Section):
    path: str = Field(description="Input file or folder (JSONL, JSON, CSV, TSV, Parquet, TXT).")
    name: str | None = Field(None, description="Source name used for mixing and reports; default: the file stem.")
    file_type: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "txt"] = Field(
        "auto", description="File type; 'auto' goes by the extension.")
    format: Literal["auto", "messages", "conversation", "sharegpt", "alpaca", "text"] = Field(
        "auto", description="Record shape; 'auto' detects it per row from the keys.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="CSV/TSV/Parquet column renames to canonical fields, e.g. {question: instruction, answer: output}.")
    text_unit: Literal["file", "paragraph", "line"] = Field(
        "file", description="For .txt inputs: one record per file, per blank-line paragraph, or per line.")

    @property
    def source(self) -> str:
        return self.name or Path(self.path).stem


class RegexRule(Section):
    pattern: str = Field(description="Python regular expression.")
    replace: str = Field("", description="Replacement (may use \\1 groups).")


class CleanConfig(Section):
    nfkc: bool = Field(True, description="Unicode NFKC normalization (Chinese punctuation kept as is).")
    fold_whitespace: bool = Field(True, description="Collapse runs of spaces and blank lines.")
    strip_control: bool = Field(True, description="Remove control and zero-width characters.")
    regex: list[RegexRule] = Field(default_factory=list, description="Extra rewrite rules, applied in order.")


class PiiConfig(Section):
    enabled: bool = Field(True, description="Mask personal data with typed placeholders such as <PHONE>.")
    kinds: list[Literal["email", "phone", "cn_id", "bank_card", "ip"]] = Field(
        default_factory=lambda: ["email", "phone", "cn_id", "bank_card", "ip"],
        description="Which kinds of personal data to mask.")
    metadata: Literal["mask", "drop"] = Field(
        "mask", description="Extra input fields kept in each record's metadata (a patient_email or phone column): "
                            "'mask' their values like contents, or 'drop' them (label_field and split.stratify_by "
                            "are kept, masked).")


class DedupConfig(Section):
    exact: bool = Field(True, description="Drop rows whose normalized text repeats an earlier row.")
    near: bool = Field(True, description="Drop near-duplicates (MinHash LSH) of earlier rows.")
    threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity at which two rows are near-duplicates.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: more exact, slower).")
    shingle_size: int = Field(5, ge=1, description="Character n-gram size for near-dedup shingles.")
    against: list[str] = Field(
        default_factory=list,
        description="Evaluation files: training rows that near-duplicate them are dropped (decontamination).")


class MixConfig(Section):
    ratios: dict[str, float] = Field(
        default_factory=dict, description="Target share of each source in train, e.g. {general: 0.3, domain: 0.7}.")
    strategy: Literal["under", "over"] = Field(
        "under", description="'under' down-samples large sources, 'over' up-samples small ones.")
    total: int | None = Field(None, ge=1, description="Exact number of training rows after mixing.")


class SplitConfig(Section):
    train: float = Field(0.8, ge=0, le=1, description="Share of rows for training.")
    val: float = Field(0.1, ge=0, le=1, description="Share of rows for validation.")
    test: float = Field(0.1, ge=0, le=1, description="Share of rows for the held-out test.")
    stratify_by: str | None = Field(
        None, description="Metadata field to stratify on (default: the source name).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split shares train+val+test must sum to 1, got {total:g}")
        return self

    @property
    def ratios(self) -> tuple[float, float, float]:
        return (self.train, self.val, self.test)


class ChunkConfig(Section):
    max_tokens: int = Field(1024, ge=8, description="Raw-text records longer than this are cut into windows.")
    overlap: int = Field(128, ge=0, description="Tokens shared by consecutive windows.")

    @model_validator(mode="after")
    def _overlap_below_window(self) -> ChunkConfig:
        if self.overlap >= self.max_tokens:
            raise ValueError(f"chunk.overlap ({self.overlap}) must be below chunk.max_tokens ({self.max_tokens})")
        return self


class PrepareConfig(Section):
    inputs: list[InputSpec] = Field(default_factory=list, description="Input files, each with an optional source name.")
    output_dir: str = Field("prepared", description="Folder for train/val/test.jsonl, rejects, duplicates, report.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    terms: str | None = Field(None, description="Terminology dictionary (CSV canonical,variant or YAML).")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    role_injection: Literal["escape", "reject"] = Field(
        "escape", description="Content holding chat control tokens: escape them, or reject the row.")
    max_tokens: int = Field(
        2048, ge=0, description="Reject chat rows longer than this many tokens of the model (0: no limit).")
    keep_last_turns: int = Field(0, ge=0, description="Keep only the last K exchanges of long chats (0: all).")
    label_field: str | None = Field(
        None, description="Metadata field holding a class label: per-class counts and weights in the report.")
    seed: int = Field(0, description="Seed for splitting and mixing (same seed, same output).")
    rejects_raw: bool = Field(
        False, description="Write the unmasked input text into rejects.jsonl's 'raw' field (default: masked like "
                           "the outputs); only for data you may keep in the clear.")
