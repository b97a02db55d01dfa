"""`--format int8`: weight-only int8 for CPU serving, saved as plain safetensors and rebuilt by `load_int8`.

Each `nn.Linear` but the LM head becomes an `Int8Linear`: int8 weights with one scale per
output row (symmetric; the scale is rounded up to a bfloat16 value, so the kernel's bfloat16 scale
is exact and no weight clips), float32 bias. It runs PyTorch's CPU kernel `_weight_int8pack_mm`,
which takes bfloat16 activations; where that kernel is missing it multiplies by the dequantized
weight in float32 instead (the same weights, fp32 speed).

Why this path, measured on this project's 2-core CPU with torch 2.13 (one 576x1536 linear, batch 1,
on a busy machine, so ratios only): fp32 91-210 us, the bf16 int8 kernel 110-154 us, bf16 dense
206 us. Activations stay in (b)float: dynamic int8 activation quantization (`quantize_dynamic`,
`quantized::linear_dynamic`) ran 3x faster but agreed with fp32 on only 54-68% of SmolLM2's next
tokens, because its MLP activations have outliers ~15,000x their mean. torchao 0.18 installs and
runs on torch 2.13, but its `Int8WeightOnlyConfig` took 157 us against fp32's 91 us, and its tensor
subclasses do not save to safetensors. The fp16 kernel was exact but 12x slower. bfloat16
activations round like a bfloat16 model does, so top-1 agreement with fp32 is about that of a bf16
model; the export report measures it on every export.
The LM head stays float32 (see `quantize_int8`).

    model = quantize_int8(merged)                 # in place; returns the model
    save_int8(model, Path("out"))                 # out/model.int8.safetensors + config.json
    model = load_int8("out")                      # ready to generate
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from domaintune.errors import UserError

INT8_FILE = "model.int8.safetensors"
FORMAT_TAG = "domaintune-int8-v1"
_SUFFIX = ".weight_int8"


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and one scale per output row (inference only).

    Attributes:
        in_features, out_features: as in `nn.Linear`.
        weight_int8: int8 [out_features, in_features].
        weight_scale: float32 [out_features], each a bfloat16 value; weight = weight_int8 * weight_scale[:, None].
        bias: float32 [out_features] or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an `nn.Linear` (symmetric per-row int8)."""
        weight = linear.weight.detach().float()
        scale = _round_up_bf16((weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12))
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_int8.copy_(torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer stands for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if _KERNEL_OK:
            out = torch._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.weight_int8,
                                            self.weight_scale.to(torch.bfloat16)).to(x.dtype)
        else:
            out = F.linear(flat, self.dequantized_weight().to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _round_up_bf16(values: torch.Tensor) -> torch.Tensor:
    """The smallest bfloat16 values >= `values` (as float32), so no weight exceeds 127 * scale."""
    down = values.to(torch.bfloat16).float()
    up = torch.nextafter(values.to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
    return torch.where(down >= values, down, up)


def _kernel_works() -> bool:
    try:
        x, w = torch.ones(1, 32, dtype=torch.bfloat16), torch.ones(8, 32, dtype=torch.int8)
        return bool(torch._weight_int8pack_mm(x, w, torch.ones(8, dtype=torch.bfloat16)).sum() == 256)
    except (RuntimeError, AttributeError, NotImplementedError):  # a torch build without the CPU kernel
        return False


_KERNEL_OK = _kernel_works()


def kernel_available() -> bool:
    """Whether `Int8Linear` runs torch's int8 kernel here (else the float32 fallback)."""
    return _KERNEL_OK


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` but the LM head by an `Int8Linear`, in place.

    The head stays float32: its outputs are the logits, and the kernel's bfloat16 output would
    round them (to 0.125 near 20) and flip near-ties; tied to the embeddings, it costs no extra space.

    Args:
        model: a merged causal LM in float32 (not a peft model).

    Returns:
        The same model object.

    Example:
        >>> type(quantize_int8(nn.Sequential(nn.Linear(4, 4)))[0]).__name__
        'Int8Linear'
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head]
    for name in targets:
        _replace(model, name, Int8Linear.from_linear(model.get_submodule(name)))
    return model


def save_int8(model: nn.Module, out: Path) -> Path:
    """Save a quantized model's tensors (safetensors, no pickle) and its config into `out`.

    Returns:
        The weights file.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(out))
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights are stored once; loading re-ties them
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous()
    path = out / INT8_FILE
    save_file(tensors, str(path), metadata={"format": "pt", "domaintune": FORMAT_TAG})
    return path


def load_int8(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a model saved by `save_int8`, in eval mode.

    Args:
        path: the export folder (config.json plus model.int8.safetensors).

    Returns:
        The causal LM with `Int8Linear` layers, ready for `models.decode.generate`.

    Raises:
        UserError: the folder is not an int8 export, or its tensors do not fit its config.

    Example:
        >>> model = load_int8("exports/int8")   # doctest: +SKIP
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    weights = folder / INT8_FILE
    if not weights.is_file():
        raise UserError(f"'{folder}' holds no {INT8_FILE}",
                        hint="pass a folder written by `domaintune export --format int8`")
    with safe_open(str(weights), framework="pt") as handle:
        if (handle.metadata() or {}).get("domaintune") != FORMAT_TAG:
            raise UserError(f"'{weights}' was not written by this version's int8 export", hint="export it again")
    with _skip_init():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)), dtype=torch.float32)
    model.tie_weights()  # skipping init skips tying too (transformers 5 ties inside init_weights)
    state = load_file(str(weights))
    for name in sorted(key[: -len(_SUFFIX)] for key in state if key.endswith(_SUFFIX)):
        old = model.get_submodule(name)
        _replace(model, name, Int8Linear(old.in_features, old.out_features, old.bias is not None))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or _untied(model, result.missing_keys):
        raise UserError(f"'{weights}' does not fit its config.json "
                        f"({', '.join((result.unexpected_keys or result.missing_keys)[:3])})", hint="export it again")
    return model.eval()


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _untied(model: nn.Module, missing: list[str]) -> list[str]:
    """Missing keys that are not a second name of a tensor loaded under another name (tied)."""
    by_name = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(p) for n, p in by_name.items() if n not in missing}
    return [key for key in missing if key not in by_name or id(by_name[key]) not in loaded]


def _skip_init() -> Any:
    # Every weight is overwritten from the file; random init would only cost time.
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return no_init_weights()
