"""`domaintune export RUN_DIR --format FORMAT -o OUT`: write the export, load it back, check parity, report.

    report = run_export("runs/demo", "gguf", "exports/demo-q8", quant="q8_0", eval_records=test_rows)
    print(report.to_markdown())

Every format follows the same steps: read the run (`source`), decode the parity prompts with
base+adapter as training left it, write the export, load it back the way its runtime would
(plain transformers, peft, transformers' GGUF reader, `load_int8`), decode the same prompts built
from the export's own tokenizer and chat template, and write `export_report.{json,md}`.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.files import atomic_folder
from domaintune.export import parity, source
from domaintune.export.extras import copy_run_extras
from domaintune.export.table import REPORT_JSON, ExportReport, VariantRow

FORMATS = ("hf", "adapter", "gguf", "int8")
GGUF_FILE = "model.gguf"


@dataclass
class Context:
    """What every format's writer gets."""

    run: source.TrainedRun
    out: Path
    quant: str | None
    name: str
    tokenizer: Any
    template: Any
    chat_template: str
    stop_ids: list[int]
    pad_id: int
    reference: parity.Measured | None = None
    max_new_tokens: int = 32
    final: Path | None = None  # where `out` (a temporary sibling while writing) ends up

    @property
    def shown(self) -> Path:
        """The output folder as users will find it (for printed commands and the report)."""
        return self.final or self.out


@dataclass
class Exported:
    """A written export, loaded back as its runtime would load it."""

    label: str
    model: Any
    tokenizer: Any
    commands: dict[str, str]
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    timed: bool = True
    extra_rows: list[VariantRow] = field(default_factory=list)


def check_format(fmt: str, quant: str | None) -> str | None:
    """Validate `--format`/`--quant`; returns the quant to use (gguf defaults to f16).

    Raises:
        UserError: an unknown format or quant, or --quant with a format that takes none.

    Example:
        >>> check_format("gguf", None)
        'f16'
    """
    from domaintune.export.gguf import QUANTS

    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", hint=f"use --format {', '.join(FORMATS)}")
    if fmt != "gguf":
        if quant is not None:
            raise UserError(f"--quant applies to --format gguf only, not '{fmt}'",
                            hint="drop --quant (int8 is its own format: --format int8)")
        return None
    if quant is not None and quant not in QUANTS:
        raise UserError(f"unknown GGUF quantization '{quant}'", hint=f"use --quant {' or '.join(QUANTS)}")
    return quant or "f16"


def run_export(run_dir: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], quant: str | None = None,
               eval_records: Sequence[Mapping[str, Any]] | None = None, *, samples: int = 8,
               max_new_tokens: int = 32, name: str | None = None, trust_remote_code: bool = False) -> ExportReport:
    """Export a training run and check the result against base+adapter.

    Args:
        run_dir: the folder `domaintune train` wrote (recipe.resolved.yaml plus adapter/ or model/).
        fmt: "hf", "adapter", "gguf" or "int8".
        out: the output folder; must be new, empty, or an earlier export of the same format.
        quant: "f16" (default) or "q8_0", for gguf only.
        eval_records: chat records (e.g. the prepared test split) for parity prompts and the
            exact-match metric; None uses built-in sample prompts and reports no metric.
        samples: parity prompts used.
        max_new_tokens: the longest greedy continuation compared.
        name: the served model name in the printed commands (default: the run folder's name).
        trust_remote_code: the user's choice (never the run recipe's, see `source.open_run`).

    Returns:
        The report, also written to OUT/export_report.json and OUT/export_report.md.

    Raises:
        UserError: a bad format/quant, a run folder without adapter/ or model/, a method or
            architecture the format cannot take, or an output folder holding other files.

    Example:
        >>> run_export("runs/demo", "hf", "exports/demo-hf").parity_ok   # doctest: +SKIP
        True
    """
    quant = check_format(fmt, quant)
    if samples < 1 or max_new_tokens < 1:
        raise UserError(f"need at least 1 parity prompt and 1 new token, got {samples} and {max_new_tokens}",
                        hint="pass samples >= 1 and max_new_tokens >= 1")
    run = source.open_run(run_dir, trust_remote_code)
    final = _output_folder(out, fmt)
    # Everything is written into a temporary sibling renamed onto `final` once the report is
    # written: a crash halfway leaves an earlier export whole, never new weights beside an old report.
    with atomic_folder(final) as tmp:
        ctx = _context(run, tmp, quant, name or run.run_dir.resolve().name, max_new_tokens)
        ctx.final = final
        merged = _merged_checked(ctx, fmt)  # before the slow reference decoding, so bad input fails fast
        cases = parity.cases_from_records(eval_records, samples)
        tuned = source.load_tuned(run)
        ctx.reference = parity.measure(tuned, parity.training_prompt_ids(ctx.template, ctx.tokenizer, cases),
                                       ctx.stop_ids, ctx.pad_id, max_new_tokens, gaps=True)
        del tuned
        gc.collect()
        exported = _WRITERS[fmt](ctx, merged)
        copy_run_extras(run.run_dir, ctx.out)
        return _report(ctx, fmt, cases, exported, _folder_bytes(ctx.out))


def _context(run: source.TrainedRun, out: Path, quant: str | None, name: str, max_new_tokens: int) -> Context:
    from domaintune.export.chat_formats import jinja_template

    tokenizer, template = source.load_tokenizer_and_template(run)
    from domaintune.models.codec import pad_id, stop_ids

    stops = list(stop_ids(template, tokenizer))
    return Context(run, out, quant, name, tokenizer, template, jinja_template(template, tokenizer), stops,
                   pad_id(tokenizer), max_new_tokens=max_new_tokens)


def _merged_checked(ctx: Context, fmt: str) -> Any:
    """The merged model for hf/gguf/int8 (None for adapter), after each format's input checks."""
    if fmt == "adapter":
        from domaintune.export.adapter import require_peft

        require_peft(ctx.run.artifact, ctx.run.method)
        return None
    merged = source.load_merged(ctx.run)
    if fmt == "gguf":
        from domaintune.export.gguf import check_gguf_support, pre_tokenizer_name

        check_gguf_support(merged.config, ctx.quant)
        pre_tokenizer_name(ctx.tokenizer)
    return merged


def _output_folder(out: str | os.PathLike[str], fmt: str) -> Path:
    folder = Path(out).expanduser()
    if folder.is_file():
        raise UserError(f"output '{folder}' is a file", hint="pass a folder for -o")
    if folder.is_dir() and any(folder.iterdir()):
        same = _previous_format(folder / REPORT_JSON) == fmt
        if not same:
            raise UserError(f"output folder '{folder}' is not empty",
                            hint="pass a new folder for -o (an earlier export of the same format is overwritten)")
    return folder


def _previous_format(report: Path) -> str | None:
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):  # missing or not our JSON: not an earlier export
        return None


def _folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith("export_report")}


def _report(ctx: Context, fmt: str, cases: list[parity.Case], exported: Exported,
            files: dict[str, int]) -> ExportReport:
    ref = ctx.reference
    exp = parity.measure(exported.model, parity.shipped_prompt_ids(exported.tokenizer, cases), ctx.stop_ids, ctx.pad_id,
                         ctx.max_new_tokens, timed=exported.timed)
    hits = parity.agreement(exported.model, ref.prompt_ids, ref.continuations)
    reference_row = VariantRow("base+adapter (fp32, as trained)", _reference_bytes(ctx.run), ref.ms_per_token, None,
                               None, None, len(cases), parity.exact_match(ctx.tokenizer, ref.continuations, cases))
    row = _row(exported.label, sum(files.values()), ref, exp, hits,
               parity.exact_match(ctx.tokenizer, exp.continuations, cases))
    report = ExportReport(fmt, ctx.quant, str(ctx.run.run_dir), str(ctx.shown), fmt in ("hf", "adapter"), files,
                          [reference_row, *exported.extra_rows, row],
                          parity.parity_rows(cases, ctx.tokenizer, ref, exp, hits), exported.commands,
                          exported.notes, exported.facts)
    report.write(ctx.out)
    return report


def _row(label: str, size: int | None, ref: parity.Measured, other: parity.Measured, hits: list[list[bool]],
         metric: float | None = None) -> VariantRow:
    exact = sum(a == b for a, b in zip(ref.continuations, other.continuations))
    return VariantRow(label, size, other.ms_per_token, parity.pooled(hits),
                      parity.pooled(hits, ref.gaps, parity.CONFIDENT_GAP), exact, len(ref.continuations), metric)


def _reference_bytes(run: source.TrainedRun) -> int:
    base = sum(p.stat().st_size for p in source.base_folder(run).glob("*.safetensors"))
    trained = sum(p.stat().st_size for p in run.artifact.iterdir() if p.is_file())
    return trained if run.method == "full" else base + trained


# ---- one writer per format ---------------------------------------------------------------------

def _write_hf(ctx: Context, merged: Any) -> Exported:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from domaintune.export.merge import export_hf

    export_hf(merged, ctx.tokenizer, ctx.chat_template, ctx.stop_ids, ctx.out)
    model = AutoModelForCausalLM.from_pretrained(str(ctx.out), use_safetensors=True).eval()
    commands = {"vLLM": f"vllm serve {ctx.shown} --served-model-name {ctx.name}",
                "transformers": f"AutoModelForCausalLM.from_pretrained('{ctx.shown}')",
                "domaintune": f"domaintune serve {ctx.shown}"}
    return Exported("hf (merged, fp32 safetensors)", model, AutoTokenizer.from_pretrained(str(ctx.out)), commands)


def _write_adapter(ctx: Context, _merged: None) -> Exported:
    from transformers import AutoTokenizer

    from domaintune.export.adapter import export_adapter
    from domaintune.methods.lora import load_peft
    from domaintune.models.load import load_model

    base = source.base_folder(ctx.run)
    facts = export_adapter(ctx.run.artifact, ctx.run.method, base, ctx.tokenizer, ctx.chat_template, ctx.out)
    model = load_peft(load_model(str(base), trust_remote_code=ctx.run.trust_remote_code), ctx.out).eval()
    rank = f" --max-lora-rank {facts.max_lora_rank}" if facts.max_lora_rank else ""
    commands = {"vLLM": f"vllm serve {base} --enable-lora --lora-modules {ctx.name}={ctx.shown}{rank}",
                "peft": f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}'), '{ctx.shown}')",
                "domaintune": f"domaintune serve {base} --adapter {ctx.name}={ctx.shown}"}
    notes = [f"vLLM cannot serve this adapter: {facts.vllm_reason}"] if facts.vllm_reason else []
    if ctx.run.base == "embedded":
        notes.append(f"the base is the embedded SmolLM2-135M-Instruct, dequantized from its Q4_1 GGUF into {base}; "
                     "serve that folder (the hub's original weights differ slightly)")
    return Exported(f"adapter ({facts.peft_type.lower()})", model, AutoTokenizer.from_pretrained(str(ctx.out)),
                    commands, notes, {"peft_type": facts.peft_type, "rank": facts.rank, "base": facts.base})


def _write_gguf(ctx: Context, merged: Any) -> Exported:
    from transformers import AutoTokenizer

    from domaintune.export.gguf import load_gguf_model, write_gguf
    from domaintune.export.ollama import ollama_name, write_modelfile

    facts = write_gguf(merged, ctx.tokenizer, ctx.chat_template, ctx.stop_ids, ctx.out / GGUF_FILE, ctx.quant,
                       name=f"domaintune {ctx.name}")
    _, notes = write_modelfile(ctx.out, GGUF_FILE, ctx.template)
    model = load_gguf_model(ctx.out / GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.out), gguf_file=GGUF_FILE)
    tag = ollama_name(ctx.name)
    commands = {"llama.cpp": f"llama-server -m {ctx.shown / GGUF_FILE} --jinja",
                "Ollama": f"ollama create {tag} -f {ctx.shown / 'Modelfile'} && ollama run {tag}"}
    if facts.kept_f16:
        notes.append(f"{facts.kept_f16} matrices stayed F16: their rows are not a multiple of 32")
    # Speed is left out: transformers dequantizes the file, so its timing says nothing about llama.cpp.
    return Exported(f"gguf {ctx.quant} (read back by transformers)", model, tokenizer, commands, notes,
                    {"architecture": facts.architecture, "tensors": facts.tensors, "quantized": facts.quantized,
                     "pre_tokenizer": facts.pre_tokenizer}, timed=False)


def _write_int8(ctx: Context, merged: Any) -> Exported:
    from transformers import AutoTokenizer

    from domaintune.export import quantize
    from domaintune.export.merge import save_generation_config, save_tokenizer

    fp32 = parity.measure(merged, ctx.reference.prompt_ids, ctx.stop_ids, ctx.pad_id, ctx.max_new_tokens)
    hits = parity.agreement(merged, ctx.reference.prompt_ids, ctx.reference.continuations)
    fp32_row = _row("merged fp32 (speed baseline)", sum(p.numel() * p.element_size() for p in merged.parameters()),
                    ctx.reference, fp32, hits)
    quantize.save_int8(quantize.quantize_int8(merged), ctx.out)
    save_tokenizer(ctx.tokenizer, ctx.chat_template, ctx.out)
    save_generation_config(ctx.tokenizer, ctx.stop_ids, ctx.out)
    kernel = "the bf16 int8 kernel" if quantize.kernel_available() else "the float32 fallback (no int8 kernel in this torch)"
    commands = {"python": f"from domaintune.export.quantize import load_int8; model = load_int8('{ctx.shown}')"}
    return Exported("int8 weight-only", quantize.load_int8(ctx.out), AutoTokenizer.from_pretrained(str(ctx.out)),
                    commands, [f"int8 layers run {kernel}; the LM head stays float32"], extra_rows=[fp32_row])


_WRITERS: dict[str, Callable[[Context, Any], Exported]] = {
    "hf": _write_hf, "adapter": _write_adapter, "gguf": _write_gguf, "int8": _write_int8}
