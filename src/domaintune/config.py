"""Recipe models: the YAML a user writes, validated with pydantic (`extra="forbid"`).

This module is a light leaf (pydantic + PyYAML only), so `domaintune validate` answers instantly and
the CLI can build `--help` from the field descriptions without importing torch.

    recipe = load_recipe("recipe.yaml", overrides=["prepare.seed=3"])

Every error is reported at once, each with its file, line and a fix, as one `UserError` line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domaintune.errors import UserError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class LoraOptions(Section):
    method: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt; 'all-linear': every attention and MLP linear of the architecture.")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA scaling.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class QLoraOptions(Section):
    method: Literal["qlora"] = "qlora"
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (bitsandbytes).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Matmul dtype.")


class PrefixOptions(Section):
    method: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, description="Trained key/value prefix length per layer.")
    prefix_projection: bool = Field(False, description="Reparametrize the prefix through an MLP.")


class PromptOptions(Section):
    method: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, description="Trained soft-prompt length.")
    init_text: str | None = Field(None, description="Initialize the soft prompt from this text's embeddings.")


class IA3Options(Section):
    method: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="Modules to scale (default: k, v and down projections).")
    feedforward_modules: list[str] | None = Field(None, description="Which targets are feed-forward (scaled on input).")


class AdapterOptions(Section):
    method: Literal["adapter"] = "adapter"
    bottleneck: int = Field(64, ge=1, description="Bottleneck width of each adapter.")
    places: list[Literal["attention", "mlp"]] = Field(
        default_factory=lambda: ["attention", "mlp"], description="Insert adapters after attention and/or MLP.")
    activation: Literal["relu", "gelu", "silu"] = Field("gelu", description="Bottleneck non-linearity.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the adapter.")


class FullOptions(Section):
    method: Literal["full"] = "full"


class FreezeOptions(Section):
    method: Literal["freeze"] = "freeze"
    freeze_first: int | None = Field(None, ge=0, description="Freeze the embeddings and the first N layers.")
    train_top: int | None = Field(None, ge=1, description="Train only the top K layers (and the head).")
    train_head: bool = Field(True, description="Train the final norm and LM head.")

    @model_validator(mode="after")
    def _one_of(self) -> FreezeOptions:
        if (self.freeze_first is None) == (self.train_top is None):
            raise ValueError("set exactly one of freeze_first or train_top")
        return self


MethodConfig = Annotated[
    Union[LoraOptions, QLoraOptions, PrefixOptions, PromptOptions, IA3Options, AdapterOptions, FullOptions,
          FreezeOptions],
    Field(discriminator="method"),
]
METHOD_NAMES = ("lora", "qlora", "prefix", "prompt", "ia3", "adapter", "full", "freeze")


class LayerGroupConfig(Section):
    name: str = Field(description="Group name, shown in logs.")
    layers: str = Field(description="Layers: '0-3', '4,5,7', 'bottom:2', 'middle', 'top:3' or 'all'.")
    lr_scale: float = Field(1.0, gt=0, description="Learning-rate multiplier for this group.")
    max_grad_norm: float | None = Field(None, gt=0, description="Gradient clipping for this group.")


class TrainConfig(Section):
    data_dir: str = Field("prepared", description="Output folder of `prepare` (train.jsonl, val.jsonl).")
    output_dir: str = Field("runs/run", description="Run folder: adapter or model, checkpoints, metrics, plots.")
    method: MethodConfig = Field(default_factory=LoraOptions, description="Fine-tuning method and its options.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (overrides epochs).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps for linear warm-up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: off).")
    layer_groups: list[LayerGroupConfig] = Field(default_factory=list, description="Per-layer-group LR and clipping.")
    max_len: int = Field(1024, ge=8, description="Longest example in tokens.")
    truncation: Literal["drop", "truncate"] = Field("drop", description="Longer examples: drop them or cut them.")
    packing: bool = Field(True, description="Pack several examples into one row without padding.")
    batch_tokens: int = Field(2048, ge=8, description="Tokens per packed row (micro-batch).")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch when packing is off.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    train_on_prompt: bool = Field(False, description="Also train on system/user tokens (default: answers only).")
    keep_reasoning: bool = Field(True, description="Keep <think> reasoning in R1 training targets.")
    eval_every: int = Field(50, ge=1, description="Validate every N optimizer steps.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints to keep (the best one is always kept).")
    early_stopping_patience: int | None = Field(3, ge=1, description="Stop after N validations without improvement.")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune embedding-noise strength (off by default).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")

    @field_validator("method", mode="before")
    @classmethod
    def _default_method(cls, value: Any) -> Any:
        # `--set train.method.r=8` alone means LoRA options, the default method.
        if isinstance(value, dict) and "method" not in value:
            return {"method": "lora", **value}
        return value


class ModelConfig(Section):
    name: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a local HF folder, or a .gguf file.")
    template: str = Field("auto", description="Chat template: auto, chatml, deepseek_llm, deepseek_r1, deepseek_v3, tokenizer.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the folder (off: safer).")


class Recipe(Section):
    """A whole recipe: one section per stage. Only `domaintune.api` reads a whole Recipe."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# Loading: YAML with line numbers, --set overrides, all errors at once


def load_recipe(path: str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe from YAML, apply `--set key=value` overrides and validate it.

    Args:
        path: the YAML file, or None for defaults only.
        overrides: strings like "prepare.seed=3" or "prepare.mix.ratios.general=0.3".
        base: values set by CLI flags; the file wins over defaults, flags and overrides win over the file.

    Returns:
        The validated `Recipe`.

    Raises:
        UserError: a missing file, bad YAML, or invalid keys/values (all reported in one line).

    Example:
        >>> load_recipe(None, ["prepare.seed=7"]).prepare.seed
        7
    """
    data, lines = ({}, {}) if path is None else _read_yaml(path)
    for source in (base or {}), _parse_overrides(overrides or []):
        _deep_merge(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(err, path, lines)) from None


def _read_yaml(path: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    file = Path(path)
    if not file.is_file():
        raise UserError("recipe file not found", file=path, hint="check the path, or list shipped ones with `domaintune recipe ls`")
    text = file.read_text(encoding="utf-8-sig")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path,
                        line=mark.line + 1 if mark else None, hint="fix the YAML syntax") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError("a recipe must be a mapping of sections (model:, prepare:, ...)", file=path, line=1)
    lines: dict[tuple, int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: yaml.Node | None, loc: tuple, out: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = loc + (key.value,)
            out[here] = key.start_mark.line + 1
            _collect_lines(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[loc + (i,)] = value.start_mark.line + 1
            _collect_lines(value, loc + (i,), out)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --set '{item}'", hint="write --set section.key=value, e.g. --set prepare.seed=3")
        value = yaml.safe_load(raw) if raw.strip() else ""
        _deep_merge(result, _nest(key.strip().split("."), value))
    return result


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _deep_merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _format_errors(err: ValidationError, path: str | None, lines: dict[tuple, int]) -> str:
    parts = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        line = _nearest_line(loc, lines)
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        key = ".".join(str(x) for x in loc) or "recipe"
        parts.append(f"{where}{key}: {_describe(e, loc)}")
    return "; ".join(parts)


def _nearest_line(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _describe(error: dict[str, Any], loc: tuple) -> str:
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key (fix: {fix}allowed keys: {', '.join(allowed)})"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{msg} (got {error['input']!r})" if error["type"] != "missing" else "required key is missing"


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Recipe
    for key in loc:
        if isinstance(key, int):
            continue
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return []
        model = _section_type(field.annotation)
    return sorted(getattr(model, "model_fields", {}))


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def field_help(model: type[BaseModel], name: str) -> str:
    """The description of a recipe field, for CLI help (one source of help text)."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    suffix = f" (default: {default})" if default not in (None, [], {}) and not isinstance(default, BaseModel) else ""
    return (field.description or "") + suffix
