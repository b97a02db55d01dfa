"""Freeze tuning: train the top of the network, keep the embeddings and lower layers fixed.

    method: freeze
    freeze_first: 20        # freeze the embeddings and layers 0-19, train the rest
    # or: train_top: 4      # train only the last 4 layers
    train_head: true        # also the final norm and the LM head

The embeddings are always frozen. Tied embeddings (SmolLM2, Qwen2-0.5B) share one matrix between
the input embedding and the LM head, so training the head would train the embedding too. We keep
that matrix frozen (the embeddings-frozen promise wins, and the matrix is a fifth of a small model);
`train_head` then trains only the final norm, and a warning says so.

`save` writes only the trained tensors (`weights.safetensors`, names as in the base model) and
`method.json`; `merge` returns the model itself, which is already plain.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from domaintune.config import FreezeOptions
from domaintune.errors import UserError
from domaintune.methods.base import (base_fingerprint, check_base, decoder_layers, load_trained, read_method_file,
                                     register, save_trained, write_method_file)

log = logging.getLogger(__name__)
NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f")


def first_trained_layer(n_layers: int, opts: FreezeOptions) -> int:
    """Index of the lowest layer that trains (`n_layers` when none does)."""
    if opts.freeze_first is not None:
        if opts.freeze_first > n_layers:
            raise UserError(f"method.freeze_first ({opts.freeze_first}) exceeds the model's {n_layers} layers",
                            hint=f"use at most {n_layers}")
        return opts.freeze_first
    if opts.train_top > n_layers:
        raise UserError(f"method.train_top ({opts.train_top}) exceeds the model's {n_layers} layers",
                        hint=f"use at most {n_layers}, or method: full")
    return n_layers - opts.train_top


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The final norm and, unless it is tied to the input embedding, the LM head."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), model)
    norms = [getattr(inner, n) for n in NORM_NAMES if isinstance(getattr(inner, n, None), nn.Module)]
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        log.warning("the LM head is tied to the input embeddings; both stay frozen, train_head trains the final norm")
        head = None
    return norms[:1] + ([head] if head is not None else [])


class Freeze:
    """Train the top layers (and optionally the head); everything below stays frozen."""

    name = "freeze"

    def apply(self, model: nn.Module, opts: FreezeOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        layers = decoder_layers(model)
        start = first_trained_layer(len(layers), opts)
        if start == len(layers) and not opts.train_head:
            raise UserError("freeze leaves nothing to train", hint="lower method.freeze_first or set train_head")
        model.requires_grad_(False)
        for layer in layers[start:]:
            layer.requires_grad_(True)
        for module in head_modules(model) if opts.train_head else []:
            module.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        save_trained(model, out_dir, names)
        write_method_file(out_dir, self.name, base=base_fingerprint(model), trained=names)

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        check_base(base_model, read_method_file(out_dir))
        load_trained(base_model, out_dir)
        return base_model

    def merge(self, model: nn.Module) -> nn.Module:
        """The model itself (already plain)."""
        return model


register(Freeze())
