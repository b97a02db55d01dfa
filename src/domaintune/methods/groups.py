"""Per-layer-group learning rates and gradient clipping.

A recipe can give groups of decoder layers their own learning-rate scale and clipping norm, e.g. a
lower rate for the middle layers (where general knowledge sits) and a higher one for the top:

    groups = [LayerGroup("middle", parse_layer_spec("middle", 30), lr_scale=0.5),
              LayerGroup("top", parse_layer_spec("top:4", 30), lr_scale=2.0, max_grad_norm=0.5)]
    optimizer = torch.optim.AdamW(param_groups(model, 2e-4, 0.01, groups))
    ...loss.backward()
    norms = clip_grad_norms(optimizer.param_groups, default_max_norm=1.0)   # {"middle": .., "top": .., "default": ..}

The layer of a parameter is read from its name ("...layers.5.self_attn..."), so peft-wrapped models
work too: LoRA/IA3/adapter weights inside layer 5 belong to layer 5's group. Parameters outside the
decoder layers (embeddings, final norm, head, soft prompts) form the "default" group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from domaintune.errors import UserError

DEFAULT_GROUP = "default"
_SPEC_HINT = "use 'all', 'bottom:K', 'middle', 'top:K', 'top:33%', a range '0-3' or a list '4,5,7'"
_NO_DECAY = re.compile(r"(norm|\.bias$|ia3_l|lora_magnitude_vector)", re.IGNORECASE)


@dataclass(frozen=True)
class LayerGroup:
    """A named set of decoder layers with its own learning-rate scale and clipping norm.

    Attributes:
        name: shown in logs and in `clip_grad_norms`'s result.
        layers: decoder-layer indices (as `parse_layer_spec` returns them).
        lr_scale: multiplies the base learning rate.
        max_grad_norm: clip this group's gradient norm to this; None uses the default norm.
    """

    name: str
    layers: tuple[int, ...]
    lr_scale: float = 1.0
    max_grad_norm: float | None = None


def parse_layer_spec(spec: str, n_layers: int) -> tuple[int, ...]:
    """Turn a layer spec into sorted layer indices.

    Specs: "all"; "bottom:K" (first K); "top:K" (last K); "top:P%" / "bottom:P%" (that share of the
    layers, at least one); "middle" (the middle third: what is left after round(n/3) layers at
    each end); "0-3" (inclusive); "4,5,7"; and lists of these, "0-1,7".

    Args:
        spec: the spec.
        n_layers: the model's number of decoder layers.

    Returns:
        Unique indices in increasing order.

    Raises:
        UserError: bad syntax, an index out of range, or an empty selection.

    Example:
        >>> parse_layer_spec("top:3", 30)
        (27, 28, 29)
        >>> parse_layer_spec("top:10%", 30)
        (27, 28, 29)
    """
    text = spec.strip().lower()
    keyword, _, count = text.partition(":")
    if keyword in ("all", "middle") and not count:
        edge = round(n_layers / 3) if keyword == "middle" else 0
        layers = tuple(range(edge, n_layers - edge))
    elif keyword in ("bottom", "top") and count:
        k = _count(count, spec, n_layers)
        layers = tuple(range(k)) if keyword == "bottom" else tuple(range(n_layers - k, n_layers))
    else:
        layers = tuple(sorted({i for part in text.split(",") for i in _part(part, spec, n_layers)}))
    if not layers:
        raise UserError(f"layer spec '{spec}' selects no layer of {n_layers}", hint=_SPEC_HINT)
    return layers


def _count(text: str, spec: str, n_layers: int) -> int:
    text = text.strip()
    if text.endswith("%") and text[:-1].strip().replace(".", "", 1).isdigit() and 0 < float(text[:-1]) <= 100:
        return max(1, round(n_layers * float(text[:-1]) / 100))
    if not text.isdigit() or not 1 <= int(text) <= n_layers:
        raise UserError(f"layer spec '{spec}' needs a count from 1 to {n_layers}", hint=_SPEC_HINT)
    return int(text)


def _part(part: str, spec: str, n_layers: int) -> range:
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not match:
        raise UserError(f"bad layer spec '{spec}'", hint=_SPEC_HINT)
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) is not None else start
    if start > end or end >= n_layers:
        raise UserError(f"layer spec '{spec}': '{part.strip()}' is outside layers 0-{n_layers - 1}", hint=_SPEC_HINT)
    return range(start, end + 1)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float,
                 groups: Sequence[LayerGroup] = ()) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per layer group (and the default group), split by weight decay.

    Every trainable parameter lands in exactly one group. Biases, norms and scaling vectors
    (IA3, DoRA magnitudes) get weight decay 0: decaying them pulls scales toward zero.

    Args:
        model: the model to train (plain or peft-wrapped).
        base_lr: the recipe's learning rate.
        weight_decay: weight decay for matrices.
        groups: layer groups; a layer may be in at most one.

    Returns:
        Dicts with "params", "lr", "weight_decay", plus "group" and "max_grad_norm" for
        `clip_grad_norms` (torch optimizers keep extra keys).

    Raises:
        UserError: a layer is in two groups, or a group is called "default".
    """
    owner = _layer_owner(groups)
    pattern = _layer_pattern(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = pattern.search(name)
        group = owner.get(int(match.group(1))) if match else None
        decays = param.ndim >= 2 and not _NO_DECAY.search(name)
        buckets.setdefault((group.name if group else DEFAULT_GROUP, decays), []).append(param)
    settings = {g.name: g for g in groups}
    order = [g.name for g in groups] + [DEFAULT_GROUP]
    result = []
    for (name, decays), params in sorted(buckets.items(), key=lambda kv: (order.index(kv[0][0]), not kv[0][1])):
        group = settings.get(name)
        result.append({"params": params, "lr": base_lr * (group.lr_scale if group else 1.0),
                       "weight_decay": weight_decay if decays else 0.0, "group": name,
                       "max_grad_norm": group.max_grad_norm if group else None})
    return result


def _layer_owner(groups: Sequence[LayerGroup]) -> dict[int, LayerGroup]:
    owner: dict[int, LayerGroup] = {}
    for group in groups:
        if group.name == DEFAULT_GROUP:
            raise UserError(f"a layer group may not be called '{DEFAULT_GROUP}'", hint="rename the group")
        for layer in group.layers:
            if layer in owner:
                raise UserError(f"layer {layer} is in groups '{owner[layer].name}' and '{group.name}'",
                                hint="give each layer at most one group")
            owner[layer] = group
    return owner


def _layer_pattern(model: nn.Module) -> re.Pattern[str]:
    from domaintune.models.arch import arch_facts

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    last = arch_facts(inner.config, inner).layers_path.rsplit(".", 1)[-1] or "layers"
    return re.compile(rf"(?:^|\.){re.escape(last)}\.(\d+)\.")


def clip_grad_norms(param_groups: Sequence[dict[str, Any]], default_max_norm: float | None) -> dict[str, float]:
    """Clip each layer group's gradients to its own norm; returns the norms before clipping.

    Args:
        param_groups: as `param_groups` returns them, or `optimizer.param_groups`. Dicts of one
            layer group (its decay and no-decay halves) are clipped together.
        default_max_norm: the norm for groups without `max_grad_norm`; None: measure, don't clip.

    Returns:
        {group name: total gradient norm before clipping}; groups without gradients report 0.
    """
    members: dict[str, list[torch.Tensor]] = {}
    limits: dict[str, float | None] = {}
    for entry in param_groups:
        name = entry.get("group", DEFAULT_GROUP)
        members.setdefault(name, []).extend(p for p in entry["params"] if p.grad is not None)
        limit = entry.get("max_grad_norm")
        limits[name] = limit if limit is not None else default_max_norm
    norms = {}
    for name, params in members.items():
        if not params:
            norms[name] = 0.0
        elif limits[name] is None:
            norms[name] = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        else:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(params, limits[name]))
    return norms
