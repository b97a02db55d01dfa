"""Facts about each architecture family: which modules a method targets, MoE experts, tied embeddings.

Methods (LoRA, IA3, freeze, ...) ask `arch_facts(config)` instead of hard-coding module names.
Known families get names checked against tiny models of transformers 5.23; anything else is
discovered by walking the model's `nn.Linear` leaves (a meta-device copy when no model is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from domaintune.errors import UserError

DENSE_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
DENSE_MLP = ("gate_proj", "up_proj", "down_proj")
DENSE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# Fused expert tensors (transformers 5.x) and the per-expert Linear names of older layouts.
DEEPSEEK_EXPERTS = r"(^|\.)mlp\.experts\.(gate_up_proj|down_proj|\d+\.(gate_proj|up_proj|down_proj)\.weight)$"
GENERIC_EXPERTS = r"(^|\.)experts\."
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})
_EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")


@dataclass(frozen=True)
class ArchFacts:
    """What a fine-tuning method needs to know about one architecture family.

    Names are module-name suffixes, as peft's `target_modules` matches them (a module matches
    "q_proj" when its full name ends in ".q_proj").

    What transformers 5.23 builds, checked on tiny models:

    * llama, mistral, qwen2, qwen3: `self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`, all
      `nn.Linear` (qwen3's `q_norm`/`k_norm` are RMSNorms, not targets).
    * deepseek_v3 (MoE): MLA attention `self_attn.{q_a_proj, q_b_proj, kv_a_proj_with_mqa,
      kv_b_proj, o_proj}`, or `q_proj` instead of the q_a/q_b pair when `q_lora_rank` is None. The
      first `first_k_dense_replace` layers have a dense `mlp.{gate,up,down}_proj`; the others have
      `mlp.shared_experts.{gate,up,down}_proj` (`nn.Linear`, so `mlp_targets` reaches them), a
      router `mlp.gate` (`DeepseekV3TopkRouter`, a plain module with a `weight`, NOT an
      `nn.Linear`, and never a target), and routed experts `mlp.experts` (`DeepseekV3Experts`)
      stored as fused 3D parameters `gate_up_proj` [experts, 2*moe_intermediate, hidden] and
      `down_proj` [experts, hidden, moe_intermediate]. Those are not `nn.Linear`: peft reaches
      them only through `target_parameters`, and `expert_pattern` matches their parameter names.

    Attributes:
        family: the config's `model_type`.
        linear_targets: attention plus MLP linear suffixes (the usual "all-linear" LoRA set).
        attention_targets: attention projection suffixes.
        mlp_targets: dense / shared-expert MLP suffixes.
        moe: whether the model routes tokens to experts.
        expert_pattern: regex over `named_parameters()` names of routed-expert weights, or None.
        layers_path: dotted path of the decoder-layer `nn.ModuleList`.
        tied_embeddings: whether the LM head shares the input embedding matrix.
    """

    family: str
    linear_targets: tuple[str, ...]
    attention_targets: tuple[str, ...]
    mlp_targets: tuple[str, ...]
    moe: bool
    expert_pattern: str | None
    layers_path: str
    tied_embeddings: bool


def arch_facts(config: Any, model: nn.Module | None = None) -> ArchFacts:
    """Facts for a model's architecture.

    Args:
        config: a transformers `PretrainedConfig` (multimodal configs use their text config).
        model: the model itself, used by the generic fallback; without it an empty copy is built
            on the meta device (no memory, no weights).

    Returns:
        The family's facts.

    Raises:
        UserError: the family is unknown and transformers cannot build it to look.

    Example:
        >>> from transformers import LlamaConfig
        >>> arch_facts(LlamaConfig()).linear_targets[:2]
        ('q_proj', 'k_proj')
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = getattr(text, "model_type", "") or "generic"
    tied = bool(getattr(text, "tie_word_embeddings", False))
    if family in DENSE_FAMILIES:
        return ArchFacts(family, DENSE_ATTENTION + DENSE_MLP, DENSE_ATTENTION, DENSE_MLP, False, None,
                         "model.layers", tied)
    if family == "deepseek_v3":
        query = ("q_proj",) if getattr(text, "q_lora_rank", None) is None else ("q_a_proj", "q_b_proj")
        attention = query + ("kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
        return ArchFacts(family, attention + DENSE_MLP, attention, DENSE_MLP, True, DEEPSEEK_EXPERTS,
                         "model.layers", tied)
    return _discover(family, text, model if model is not None else _meta_model(config), tied)


def linear_module_names(model: nn.Module) -> list[str]:
    """Suffixes of the model's `nn.Linear` leaves, in first-seen order.

    The LM head (the output embedding) and MoE routers ("gate", "router", "shared_expert_gate")
    are left out: a router is a selector, not a projection to adapt.

    Args:
        model: any torch model.

    Returns:
        Unique last name components, e.g. ["q_proj", "k_proj", ..., "down_proj"].
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        suffix = name.rsplit(".", 1)[-1]
        if not isinstance(module, nn.Linear) or module is head or suffix == "lm_head":
            continue
        if suffix not in ROUTER_NAMES:
            names[suffix] = None
    return list(names)


def _discover(family: str, config: Any, model: nn.Module, tied: bool) -> ArchFacts:
    attention: dict[str, None] = {}
    mlp: dict[str, None] = {}
    suffixes = set(linear_module_names(model))
    for name, module in model.named_modules():
        suffix = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and suffix in suffixes:
            is_attention = "attn" in name or "attention" in name
            (attention if is_attention else mlp)[suffix] = None
    moe = any(getattr(config, k, 0) or 0 for k in _EXPERT_COUNT_KEYS) or any(
        ".experts" in n for n, _ in model.named_modules())
    linear = tuple(attention) + tuple(s for s in mlp if s not in attention)
    return ArchFacts(family, linear, tuple(attention), tuple(s for s in mlp if s not in attention), bool(moe),
                     GENERIC_EXPERTS if moe else None, _layers_path(model, config), tied)


def _layers_path(model: nn.Module, config: Any) -> str:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n]
    depth = getattr(config, "num_hidden_layers", None)
    exact = [n for n, m in lists if len(m) == depth]
    return (exact or [n for n, _ in lists] or [""])[0]


def _meta_model(config: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"unknown architecture '{getattr(config, 'model_type', '?')}'",
                        hint="use a llama, mistral, qwen2, qwen3 or deepseek_v3 model") from err
