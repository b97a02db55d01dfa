"""`--format adapter`: the PEFT adapter folder as `vllm serve BASE --enable-lora --lora-modules NAME=OUT` takes it.

The folder holds `adapter_config.json` (its `base_model_name_or_path` set to the local base folder
the adapter was trained on, so `PeftModel.from_pretrained` and vLLM find the right base),
`adapter_model.safetensors`, `method.json` (so `domaintune serve --adapter` knows the method), and
the tokenizer with the training chat template (vLLM uses a tokenizer found in the adapter folder
for that adapter's requests).

vLLM serves LoRA only (no DoRA, IA3, prefix or prompt tuning) and caps the rank at
`--max-lora-rank` (16 unless raised); `AdapterFacts` says whether this adapter fits and which
flag it needs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.export.merge import save_tokenizer
from domaintune.methods.base import METHOD_FILE
from domaintune.models.load import PEFT_CONFIG, PEFT_WEIGHTS

ADAPTER_FILES = (PEFT_CONFIG, PEFT_WEIGHTS, METHOD_FILE)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values
VLLM_DEFAULT_RANK = 16


@dataclass(frozen=True)
class AdapterFacts:
    """What the exported adapter is and whether vLLM can serve it.

    Attributes:
        peft_type: PEFT's name for it, e.g. "LORA".
        rank: the LoRA rank, or None for other types.
        base: the base folder written into `base_model_name_or_path`.
        vllm_reason: why vLLM cannot serve it, or None when it can.
        max_lora_rank: the `--max-lora-rank` vLLM needs, or None when the default (16) is enough.
    """

    peft_type: str
    rank: int | None
    base: str
    vllm_reason: str | None
    max_lora_rank: int | None


def export_adapter(artifact: Path, method: str, base: Path, tokenizer: Any, chat_template: str,
                   out: Path) -> AdapterFacts:
    """Write the PEFT adapter folder for vLLM and peft.

    Args:
        artifact: the run's saved adapter folder (`RUN_DIR/adapter`).
        method: the saved method's name (for the error message).
        base: the local base-model folder, recorded as `base_model_name_or_path`.
        tokenizer: the base tokenizer.
        chat_template: the training template as Jinja.
        out: the output folder (created).

    Returns:
        The adapter's facts.

    Raises:
        UserError: the run saved no PEFT adapter (full/freeze weights, a bottleneck adapter).

    Example:
        >>> facts = export_adapter(run.artifact, "lora", base_folder(run), tok, jinja, Path("out"))  # doctest: +SKIP
        >>> facts.peft_type                                                                     # doctest: +SKIP
        'LORA'
    """
    require_peft(artifact, method)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (artifact / name).is_file():
            shutil.copy2(artifact / name, out / name)
    config = json.loads((out / PEFT_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base)
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, chat_template, out)
    return _facts(config, str(base))


def require_peft(artifact: Path, method: str) -> None:
    """Raise a UserError unless `artifact` is a PEFT adapter folder."""
    if not (artifact / PEFT_CONFIG).is_file():
        raise UserError(f"method '{method}' saved no PEFT adapter, so there is no adapter folder to export",
                        hint=_no_adapter_hint(method))


def _no_adapter_hint(method: str) -> str:
    if method in ("full", "freeze"):
        return "the run holds full weights: use --format hf (or gguf, int8)"
    return "serve it with `domaintune serve --adapter NAME=RUN_DIR/adapter`; no outside server loads this method"


def _facts(config: dict[str, Any], base: str) -> AdapterFacts:
    peft_type = str(config.get("peft_type", "?"))
    rank = config.get("r") if peft_type == "LORA" else None
    reason = None
    if peft_type != "LORA":
        reason = f"vLLM serves LoRA adapters only, not {peft_type}"
    elif config.get("use_dora"):
        reason = "vLLM does not serve DoRA adapters"
    elif rank is not None and rank > VLLM_LORA_RANKS[-1]:
        reason = f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})"
    needed = None
    if reason is None and rank is not None and rank > VLLM_DEFAULT_RANK:
        needed = next(r for r in VLLM_LORA_RANKS if r >= rank)
    return AdapterFacts(peft_type, rank, base, reason, needed)
