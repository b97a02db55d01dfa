"""QLoRA: LoRA on a base model loaded in 4-bit by bitsandbytes (CUDA only).

    method: qlora
    quant_type: nf4
    compute_dtype: bfloat16

The base is loaded with a `BitsAndBytesConfig` built from `QLoraOptions`, prepared with peft's
`prepare_model_for_kbit_training` (norms in fp32, input gradients on, gradient checkpointing), then
wrapped with the same `LoraConfig` as `method: lora`. Load the base with `load_quantized` to load it
once; `apply` given a full-precision model reloads it, quantized, from its folder.

Without CUDA or bitsandbytes `apply` raises a `UserError` (use `method: lora` on CPU). bitsandbytes
is imported only there (habit 9), so CPU installs never touch it.

The saved folder is a plain PEFT LoRA adapter. `merge` returns None: folding it into 4-bit weights
would re-quantize them and lose the update's precision. To merge, load the folder with
`get_method("lora").load(...)` onto a 16/32-bit copy of the base and merge that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from domaintune.config import QLoraOptions
from domaintune.errors import UserError
from domaintune.methods.base import register
from domaintune.methods.lora import PeftSaved, lora_config, v5_names_as_given


def require_gpu() -> None:
    """Raise a UserError unless CUDA and bitsandbytes are both available."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("qlora needs a CUDA GPU and bitsandbytes", hint="use method: lora on CPU")


def bnb_config(opts: QLoraOptions) -> Any:
    """The transformers `BitsAndBytesConfig` for 4-bit loading."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=opts.quant_type,
                              bnb_4bit_use_double_quant=opts.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, opts.compute_dtype))


def load_quantized(path: str | Path, opts: QLoraOptions) -> nn.Module:
    """Load a causal LM from a local folder in 4-bit on the current CUDA device.

    Args:
        path: a local Hugging Face model folder (safetensors).
        opts: the qlora options (quant type, double quantization, compute dtype).

    Returns:
        The quantized model.

    Raises:
        UserError: no CUDA GPU or no bitsandbytes.
    """
    from transformers import AutoModelForCausalLM

    require_gpu()
    return AutoModelForCausalLM.from_pretrained(
        str(path), quantization_config=bnb_config(opts), dtype=getattr(torch, opts.compute_dtype),
        device_map={"": torch.cuda.current_device()}, use_safetensors=True)


class QLora(PeftSaved):
    """LoRA over a frozen 4-bit base."""

    name = "qlora"

    def apply(self, model: nn.Module, opts: QLoraOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        require_gpu()
        if not getattr(model, "is_loaded_in_4bit", False):
            model = load_quantized(model.name_or_path, opts)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        with v5_names_as_given():
            return get_peft_model(model, lora_config(model, opts))

    def merge(self, model: nn.Module) -> None:
        """None: see the module docstring (merge onto a full-precision base with the lora method)."""
        return None


register(QLora())
