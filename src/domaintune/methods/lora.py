"""LoRA (with rsLoRA and DoRA switches) through peft's `LoraConfig`.

    method: lora
    r: 16
    alpha: 32
    target_modules: all-linear     # resolved per architecture by `models.arch`

"all-linear" means the architecture's attention and MLP `nn.Linear` modules, never the LM head or
an MoE router. On DeepSeek-V3 that is the MLA projections (`q_a_proj`, `q_b_proj` or `q_proj`,
`kv_a_proj_with_mqa`, `kv_b_proj`, `o_proj`), the dense MLP of the first layers and the
shared experts (`mlp.shared_experts.{gate,up,down}_proj`). The routed experts are NOT adapted:
transformers 5.x stores them as fused 3-D parameters (`mlp.experts.gate_up_proj`, `down_proj`),
which peft reaches only through `target_parameters`, and its `ParamWrapper` refuses dropout and
DoRA; a LoRA per routed expert would also dwarf the rest of the adapter.

The saved folder is a standard PEFT adapter (adapter_config.json with the resolved target names,
adapter_model.safetensors), loadable by `peft.PeftModel.from_pretrained` and by vLLM (DoRA
adapters excepted: vLLM serves plain LoRA only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from domaintune.config import LoraOptions
from domaintune.errors import UserError
from domaintune.methods.base import register, write_method_file
from domaintune.models.load import check_adapter_folder


def resolve_targets(model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Turn "all-linear" or a list of names into module-name suffixes present in `model`.

    Args:
        model: the base model.
        target_modules: "all-linear" or module names such as ["q_proj", "v_proj"].

    Returns:
        The names, each matching at least one `nn.Linear` of the model.

    Raises:
        UserError: a name matches no linear module of this model (the message lists those that do).

    Example:
        >>> resolve_targets(llama_model, "all-linear")   # doctest: +SKIP
        ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    """
    from domaintune.models.arch import arch_facts, linear_module_names

    available = linear_module_names(model)
    if target_modules == "all-linear":
        found = [name for name in arch_facts(model.config, model).linear_targets if name in available]
        if not found:
            raise UserError(f"'all-linear' found no attention or MLP linear in this {model.config.model_type} model",
                            hint="list target_modules by name")
        return found
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise UserError(f"target_modules {missing} match no linear module of this "
                        f"{model.config.model_type} model", hint=f"use 'all-linear' or some of: {', '.join(available)}")
    return list(target_modules)


def lora_config(model: nn.Module, opts: Any) -> LoraConfig:
    """The peft `LoraConfig` for LoRA-style options (LoraOptions or QLoraOptions)."""
    return LoraConfig(
        task_type="CAUSAL_LM", r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
        target_modules=resolve_targets(model, opts.target_modules), layers_to_transform=_layers(model, opts),
        use_rslora=getattr(opts, "use_rslora", False), use_dora=getattr(opts, "use_dora", False))


def _layers(model: nn.Module, opts: Any) -> list[int] | None:
    """peft's `layers_to_transform` for `opts.layers` (None: every layer)."""
    spec = getattr(opts, "layers", "all")
    if spec.strip().lower() == "all":
        return None
    from domaintune.methods.base import decoder_layers
    from domaintune.methods.groups import parse_layer_spec

    return list(parse_layer_spec(spec, len(decoder_layers(model))))


@contextlib.contextmanager
def v5_names_as_given() -> Iterator[None]:
    """Stop peft from renaming LoRA targets as if they were written for transformers v4 (peft#3711).

    On models whose MoE layout changed in transformers v5 (DeepSeek-V2/V3, Qwen2/3-MoE, Mixtral)
    peft 0.21 maps every `gate_proj`/`up_proj`/`down_proj` target to the fused routed-expert
    parameters and `gate` to the router, dropping the dense and shared-expert linears we asked for.
    Our targets are resolved against the v5 model itself, so that conversion is wrong for them.
    peft looks the function up on its module at each call, so swapping it there is enough.
    """
    try:
        import peft.utils.transformers_weight_conversion as conversion
    except ImportError:  # a peft without the v4 -> v5 conversion has nothing to undo
        yield
        return
    original = conversion.convert_peft_config_for_transformers
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original


def save_peft(model: nn.Module, out_dir: Path, name: str) -> None:
    """Save a peft model's adapter (PEFT format) plus `method.json`."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"{name}.save expects the peft model that {name}.apply returned")
    model.save_pretrained(str(out_dir))
    write_method_file(out_dir, name)


def load_peft(base_model: nn.Module, out_dir: Path) -> nn.Module:
    """Wrap `base_model` with the PEFT adapter saved in `out_dir` (inference mode)."""
    check_adapter_folder(out_dir)
    with v5_names_as_given():
        return PeftModel.from_pretrained(base_model, str(out_dir))


class PeftSaved:
    """`save` and `load` of the methods whose result is a PEFT adapter folder (plus method.json)."""

    name: str

    def save(self, model: nn.Module, out_dir: Path) -> None:
        save_peft(model, out_dir, self.name)

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        return load_peft(base_model, out_dir)


class Lora(PeftSaved):
    """LoRA: trainable low-rank updates B·A beside frozen linear weights."""

    name = "lora"

    def apply(self, model: nn.Module, opts: LoraOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        with v5_names_as_given():
            return get_peft_model(model, lora_config(model, opts))

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold B·A into the base weights (in place) and return the plain model."""
        return model.merge_and_unload()


register(Lora())
