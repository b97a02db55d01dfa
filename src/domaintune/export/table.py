"""The export report: a size/speed/accuracy table and a parity table, as JSON and Markdown.

Every export writes `OUT/export_report.json` (for scripts and CI) and `OUT/export_report.md` (for
people); the CLI prints the same tables. Numbers come from `export.parity`; this module only
holds and formats them.

    report.write(Path("out"))    # -> out/export_report.json, out/export_report.md
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from domaintune.files import write_json_atomic, write_text_atomic

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


@dataclass(frozen=True)
class VariantRow:
    """One model in the size/speed/accuracy table.

    Attributes:
        name: e.g. "base+adapter (fp32)" or "gguf q8_0".
        size_bytes: bytes on disk, or None.
        ms_per_token: greedy decoding, one request, PyTorch on CPU (prefill included), or None
            where the figure would not describe the runtime the export is for (gguf).
        top1_agreement: share of reference continuation positions where this model's argmax is
            the reference's token (teacher-forced), or None for the reference itself.
        top1_confident: the same over positions where the reference's token led the runner-up by
            at least `parity.CONFIDENT_GAP` logits (near-ties flip under any rounding), or None.
        exact_continuations: prompts whose greedy continuation equals the reference's.
        prompts: prompts compared.
        exact_match: the eval metric (exact match of the answer, percent) where eval records
            with answers were given, else None.
    """

    name: str
    size_bytes: int | None
    ms_per_token: float | None
    top1_agreement: float | None
    top1_confident: float | None
    exact_continuations: int | None
    prompts: int
    exact_match: float | None = None


@dataclass(frozen=True)
class ParityRow:
    """One prompt of the parity check.

    Attributes:
        prompt: the last user message, shortened.
        prompt_tokens: the reference prompt's length in tokens.
        ids_equal: the export's tokenizer and chat template give the training prompt ids.
        reference: the reference's greedy continuation (text).
        exported: the export's greedy continuation (text).
        exact: the two continuations have the same token ids.
        top1_agreement: teacher-forced agreement on this prompt's reference continuation.
    """

    prompt: str
    prompt_tokens: int
    ids_equal: bool
    reference: str
    exported: str
    exact: bool
    top1_agreement: float


@dataclass
class ExportReport:
    """Everything one export measured, plus how to serve the result.

    Attributes:
        format: "hf", "adapter", "gguf" or "int8".
        quant: "f16"/"q8_0" for gguf, else None.
        run_dir: the training run exported.
        out: the output folder.
        expect_exact: whether exact parity is expected (hf, adapter) or only reported.
        files: {file name: bytes} of the export.
        variants: the size/speed/accuracy table.
        parity: the parity table.
        commands: how to serve the export, by runtime.
        notes: anything the user should know (vLLM limits, template translation, ...).
        facts: format-specific details (GGUF tensor counts, adapter rank, ...).
    """

    format: str
    quant: str | None
    run_dir: str
    out: str
    expect_exact: bool
    files: dict[str, int] = field(default_factory=dict)
    variants: list[VariantRow] = field(default_factory=list)
    parity: list[ParityRow] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def parity_ok(self) -> bool:
        """Prompt ids all equal, and (where exact parity is expected) every continuation equal."""
        ids = all(row.ids_equal for row in self.parity)
        return ids and (not self.expect_exact or all(row.exact for row in self.parity))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what `export_report.json` holds)."""
        return {**asdict(self), "parity_ok": self.parity_ok}

    def to_markdown(self) -> str:
        """The report as Markdown tables."""
        title = f"# Export: {self.format}" + (f" {self.quant}" if self.quant else "")
        lines = [title, "", f"Run: `{self.run_dir}`  ", f"Output: `{self.out}`", "", "## Size, speed, accuracy", "",
                 "| model | size | ms/token | top-1 agreement | top-1, confident positions | exact continuations "
                 "| exact match |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [_variant_line(v) for v in self.variants]
        expectation = "exact match expected" if self.expect_exact else "top-1 agreement reported"
        lines += ["", f"## Parity ({expectation}): {'OK' if self.parity_ok else 'DIFFERENT'}", "",
                  "| prompt | tokens | same ids | reference | export | exact | top-1 |",
                  "|---|---:|---|---|---|---|---:|"]
        lines += [_parity_line(p) for p in self.parity]
        if self.commands:
            lines += ["", "## Serve it", ""] + [f"- {k}: `{v}`" for k, v in self.commands.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write `export_report.json` and `export_report.md` into `out`."""
        json_path, md_path = out / REPORT_JSON, out / REPORT_MD
        write_json_atomic(json_path, self.to_dict(), indent=2)
        write_text_atomic(md_path, self.to_markdown())
        return json_path, md_path


def human_bytes(n: int | None) -> str:
    """Bytes as text: 1536 -> "1.5 KB".

    Example:
        >>> human_bytes(220_232_208)
        '220.2 MB'
    """
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _variant_line(v: VariantRow) -> str:
    speed = "n/a" if v.ms_per_token is None else f"{v.ms_per_token:.1f}"
    exact = "-" if v.exact_continuations is None else f"{v.exact_continuations}/{v.prompts}"
    metric = "n/a" if v.exact_match is None else f"{v.exact_match:.1f}"
    agreement = "reference" if v.top1_agreement is None else _pct(v.top1_agreement)
    confident = "reference" if v.top1_agreement is None else _pct(v.top1_confident)
    return f"| {v.name} | {human_bytes(v.size_bytes)} | {speed} | {agreement} | {confident} | {exact} | {metric} |"


def _cell(text: str, limit: int = 60) -> str:
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parity_line(p: ParityRow) -> str:
    return (f"| {_cell(p.prompt, 40)} | {p.prompt_tokens} | {'yes' if p.ids_equal else 'NO'} | {_cell(p.reference)} | "
            f"{_cell(p.exported)} | {'yes' if p.exact else 'no'} | {_pct(p.top1_agreement)} |")
