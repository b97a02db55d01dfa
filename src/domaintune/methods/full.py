"""Full fine-tuning: every parameter trains.

    method: full

`save` writes a complete Hugging Face model folder (`save_pretrained`: config.json plus sharded
safetensors, tied weights stored once), so the result loads with `AutoModelForCausalLM`, converts
to GGUF and serves without the base. `load` reads it back with `from_pretrained`, not a plain
state-dict copy: transformers saves some layouts in their original checkpoint form (DeepSeek-V3's
fused experts are written back per expert) and only its loader reverses that. The base model
gives the class, dtype and device. `merge` returns the model itself: there is nothing to fold in.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domaintune.config import FullOptions
from domaintune.methods.base import read_method_file, register, write_method_file


class Full:
    """Train every weight of the model."""

    name = "full"

    def apply(self, model: nn.Module, opts: FullOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir))
        write_method_file(out_dir, self.name)

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        read_method_file(out_dir)  # a clear error for a folder another tool wrote
        weight = next(base_model.parameters())
        model = type(base_model).from_pretrained(str(out_dir), dtype=weight.dtype, use_safetensors=True)
        return model.to(weight.device)

    def merge(self, model: nn.Module) -> nn.Module:
        """The model itself (already plain)."""
        return model


register(Full())
