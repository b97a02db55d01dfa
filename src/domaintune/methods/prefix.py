"""Prefix tuning through peft's `PrefixTuningConfig`: trained key/value prefixes in every layer.

    method: prefix
    num_virtual_tokens: 20

peft feeds the prefixes to the model as a ready-filled KV cache of per-head keys and values, one
width for both. That does not fit multi-head latent attention (DeepSeek-V2/V3, Kimi): its cache
holds a single-head compressed latent (`kv_lora_rank` wide) and a rotary key (`qk_rope_head_dim`
wide), so concatenation fails inside the attention. `apply` refuses such models up front with a
`UserError` pointing at `method: prompt` or `method: lora`.

`merge` returns None: a prefix is extra attention context, not a weight change, so there is
nothing to fold into the base weights.
"""

from __future__ import annotations

from pathlib import Path

from peft import PrefixTuningConfig, get_peft_model
from torch import nn

from domaintune.config import PrefixOptions
from domaintune.errors import UserError
from domaintune.methods.base import register
from domaintune.methods.lora import PeftSaved


def check_cache_layout(model: nn.Module) -> None:
    """Raise a UserError when the model caches a compressed latent (MLA) rather than keys/values."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    latent = getattr(config, "kv_lora_rank", None)
    if latent:
        raise UserError(
            f"prefix tuning cannot adapt {config.model_type}: its attention (MLA) caches a compressed latent "
            f"({latent} wide) and a rotary key ({getattr(config, 'qk_rope_head_dim', '?')} wide) instead of the "
            "per-head keys and values peft's prefixes are made of", hint="use method: prompt or method: lora")


class Prefix(PeftSaved):
    """Prefix tuning (Li and Liang, 2021)."""

    name = "prefix"

    def apply(self, model: nn.Module, opts: PrefixOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        check_cache_layout(model)
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                    prefix_projection=opts.prefix_projection)
        return get_peft_model(model, config)

    def merge(self, model: nn.Module) -> None:
        """None: see the module docstring (a prefix is context, not a weight change)."""
        return None


register(Prefix())
