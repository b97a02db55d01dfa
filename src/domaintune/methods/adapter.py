"""Bottleneck adapters (Houlsby et al., 2019) after the attention and/or MLP of every decoder layer.

    method: adapter
    bottleneck: 64
    places: [attention, mlp]

Each adapter is `h + up(dropout(act(down(h))))` with `up` initialized to zero, so the model starts
out exactly as the base. It is registered as a sibling of the module it follows
(`layers.5.attention_adapter` beside `layers.5.self_attn`) and applied by a forward hook on that
module, so every base state-dict key stays unchanged. Parameters per adapter:
`2 * hidden * bottleneck + bottleneck + hidden` (about 3% of SmolLM2-135M at the defaults).

Written here because no well-kept library offers it for transformers 5: AdapterHub's `adapters`
1.3.0 pins `transformers~=4.57.6`, and peft has no bottleneck adapter.

`save` writes `weights.safetensors` (adapter tensors only) and `method.json` (the options and a
fingerprint of the base); `merge` returns None because the non-linearity between `down` and `up` cannot be
folded into a linear weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from domaintune.config import AdapterOptions
from domaintune.errors import UserError
from domaintune.methods.base import (base_fingerprint, check_base, decoder_layers, load_trained, read_method_file,
                                     register, save_trained, write_method_file)

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
PLACE_MODULES = {"attention": ("self_attn", "attention", "attn"), "mlp": ("mlp", "feed_forward", "ffn")}


class BottleneckAdapter(nn.Module):
    """`h + up(dropout(act(down(h))))`, the identity at initialization."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, dropout: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.activation = activation
        self.down = nn.Linear(hidden, bottleneck, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.dropout(self.act(self.down(hidden.to(self.down.weight.dtype)))))
        return hidden + delta.to(hidden.dtype)


def _hook(adapter: BottleneckAdapter):
    def run(module: nn.Module, args: Any, output: Any) -> Any:
        # Attention modules return (hidden, attn_weights, ...); MLPs return the hidden states alone.
        if isinstance(output, tuple):
            return (adapter(output[0]),) + output[1:]
        return adapter(output)
    return run


def _target(layer: nn.Module, place: str) -> nn.Module:
    for attr in PLACE_MODULES[place]:
        if isinstance(getattr(layer, attr, None), nn.Module):
            return getattr(layer, attr)
    raise UserError(f"cannot find the {place} module of {type(layer).__name__}",
                    hint="use a llama, qwen2, qwen3, mistral or deepseek_v3 model")


def add_adapters(model: nn.Module, opts: AdapterOptions) -> int:
    """Insert the adapters into every decoder layer (base weights untouched); returns how many."""
    hidden = model.config.get_text_config().hidden_size
    weight = model.get_input_embeddings().weight
    # Half-precision bases get fp32 adapters, as peft does for LoRA: small updates vanish in bf16.
    dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    count = 0
    for layer in decoder_layers(model):
        for place in opts.places:
            if hasattr(layer, f"{place}_adapter"):
                raise UserError("this model already has adapters", hint="apply method: adapter to a fresh base")
            adapter = BottleneckAdapter(hidden, opts.bottleneck, opts.activation, opts.dropout, dtype).to(weight.device)
            layer.add_module(f"{place}_adapter", adapter)
            _target(layer, place).register_forward_hook(_hook(adapter))
            count += 1
    return count


def adapter_names(model: nn.Module) -> list[str]:
    """Parameter names of all adapters in the model."""
    return [n for n, _ in model.named_parameters() if "_adapter." in n]


class Adapter:
    """Bottleneck adapters; the base model stays frozen."""

    name = "adapter"

    def apply(self, model: nn.Module, opts: AdapterOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        model.requires_grad_(False)
        add_adapters(model, opts)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        names = adapter_names(model)
        if not names:
            raise TypeError("adapter.save expects the model that adapter.apply returned")
        save_trained(model, out_dir, names)
        sample = next(m for m in model.modules() if isinstance(m, BottleneckAdapter))
        places = [p for p in ("attention", "mlp") if any(f".{p}_adapter." in n for n in names)]
        write_method_file(out_dir, self.name, base=base_fingerprint(model), bottleneck=sample.down.out_features,
                          places=places, activation=sample.activation, dropout=sample.dropout.p)

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        settings = read_method_file(out_dir)
        check_base(base_model, settings)
        opts = AdapterOptions(**{k: settings[k] for k in ("bottleneck", "places", "activation", "dropout")})
        model = self.apply(base_model, opts)
        missing = set(adapter_names(model)) - load_trained(model, out_dir)
        if missing:
            raise UserError(f"'{out_dir}' lacks adapter weights {sorted(missing)[:3]}",
                            hint="point at a folder `method: adapter` saved from this base model")
        return model

    def merge(self, model: nn.Module) -> None:
        """None: see the module docstring (the bottleneck's non-linearity cannot be folded)."""
        return None


register(Adapter())
