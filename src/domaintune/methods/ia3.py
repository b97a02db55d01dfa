"""IA3 through peft's `IA3Config`: trained vectors that rescale keys, values and MLP activations.

    method: ia3                       # targets default per architecture

Default targets follow the paper (scale keys, values and the feed-forward inner activation):
`k_proj`, `v_proj` and `down_proj` on LLaMA/Qwen2 (`down_proj` is "feed-forward": its input is
scaled). DeepSeek-V3's MLA has no separate key/value projections; `kv_b_proj`, which expands the
cached latent into the non-rotary keys and the values, takes their place, with the dense and
shared-expert `down_proj`. Routed experts are fused 3-D parameters and are not scaled.

`merge` folds the vectors into the weights they scale (peft's `merge_and_unload`).
"""

from __future__ import annotations

from pathlib import Path

from peft import IA3Config, get_peft_model
from torch import nn

from domaintune.config import IA3Options
from domaintune.errors import UserError
from domaintune.methods.base import register
from domaintune.methods.lora import PeftSaved, resolve_targets

KEY_VALUE = ("k_proj", "v_proj", "kv_b_proj")
MLP_OUT = ("down_proj", "fc2", "c_proj", "w2")


def default_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for the model's architecture."""
    from domaintune.models.arch import arch_facts, linear_module_names

    facts, present = arch_facts(model.config, model), set(linear_module_names(model))
    attention = [n for n in facts.attention_targets if n in KEY_VALUE and n in present]
    mlp = [n for n in facts.mlp_targets if n in MLP_OUT and n in present][:1]
    if not attention and not mlp:
        raise UserError(f"no default IA3 targets for {facts.family}", hint="set method.target_modules and "
                        "method.feedforward_modules")
    return attention + mlp, mlp


def ia3_config(model: nn.Module, opts: IA3Options) -> IA3Config:
    """The peft config, with targets resolved and checked against the model."""
    if opts.target_modules is None:
        targets, feedforward = default_targets(model)
    else:
        from domaintune.models.arch import arch_facts

        targets = resolve_targets(model, opts.target_modules)
        feedforward = [n for n in targets if n in arch_facts(model.config, model).mlp_targets]
    if opts.feedforward_modules is not None:
        feedforward = list(opts.feedforward_modules)
    stray = [n for n in feedforward if n not in targets]
    if stray:
        raise UserError(f"feedforward_modules {stray} are not among the IA3 targets {targets}",
                        hint="list every feed-forward module in method.target_modules too")
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)


class IA3(PeftSaved):
    """IA3 (Liu et al., 2022): learned rescaling vectors, initialized to one."""

    name = "ia3"

    def apply(self, model: nn.Module, opts: IA3Options, *, tokenizer_path: Path | None = None) -> nn.Module:
        return get_peft_model(model, ia3_config(model, opts))

    def merge(self, model: nn.Module) -> nn.Module:
        """Multiply the vectors into the scaled weights (in place) and return the plain model."""
        return model.merge_and_unload()


register(IA3())
