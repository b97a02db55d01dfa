"""Frozen-layer caching: the layers below the first trained one run once per example, not once per epoch.

When only the top K decoder layers train (LoRA with `layers: top:K`, `freeze` with `train_top`),
the layers below them are a fixed function of each example's tokens: every epoch recomputes the
same hidden states. `FrozenPrefix` computes them once (no grad, eval mode, in packed rows: packed
examples never see each other, so each example's states do not depend on its neighbours) and keeps
them per example; training then feeds them to the top layers as `inputs_embeds`, with the decoder's
layer list cut to the trained part for the duration of the step. The first epoch costs what it
did; each later one costs only the top layers (the LM head already runs on answer positions only).

It applies only where it is exact: no trainable parameter below the cut (embeddings included), no
NEFTune noise, no dropout in the model's own layers (the cache is computed in eval mode), no
virtual tokens (prompt/prefix tuning), the plain answer loss (a distillation teacher reads the
batch too and needs its own embeddings), and a model whose forward does nothing to
`inputs_embeds` before the first layer (LLaMA, Qwen2, Mistral, Qwen3, DeepSeek-V3; Gemma scales
them, so it is left out). Before training, one batch is run both ways in eval mode; if the losses
differ by more than `CHECK_RTOL` the cache is dropped and training goes on the ordinary way. The
states are kept in the model's dtype on its device; above `MAX_CACHE_FRACTION` of the free memory
the cache is not built (a resume follows the decision its run made, so it takes the same path).
With `max_seconds` (a share of a time budget) the build is timed as it goes and given up once the
projected total exceeds it: a cache that would eat the budget is worth less than the steps it costs.

    prefix = FrozenPrefix.build(model, examples, batch_tokens=2048)   # None where it does not apply
    with prefix.top_only():
        loss, n = causal_lm_loss(model, prefix.attach(batch, rows))
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from domaintune.methods.base import decoder_layers
from domaintune.progress import bar
from domaintune.models.batch import Example, collate_packed, pack_examples

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral", "deepseek_v3")
CHECK_RTOL = 1e-4
MAX_CACHE_FRACTION = 0.25
PROJECT_AFTER = 0.05  # share of the tokens encoded before a time cap judges the build


class _Captured(Exception):
    """Raised by the hook on the last frozen layer: its output is all the forward has to produce."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


class BuildTooSlow(Exception):
    """The cache build was given up: `projected_s` is the whole build's projected seconds."""

    def __init__(self, projected_s: float) -> None:
        super().__init__(f"{projected_s:.0f} s projected")
        self.projected_s = projected_s


def first_trained_layer(model: nn.Module) -> int | None:
    """The index of the lowest decoder layer with a trainable parameter (None: a trainable
    parameter outside the decoder layers sits below them, or nothing trains)."""
    layers = decoder_layers(model)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    below = [p for p in model.parameters() if p.requires_grad and id(p) not in in_layers]
    embedding = model.get_input_embeddings().weight
    if any(p is embedding for p in below):
        return None
    trained = [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]
    return trained[0] if trained else None


class FrozenPrefix:
    """Every training example's hidden states after the frozen layers, and the swap to the top ones.

    Args:
        model: the model being trained (method applied).
        cut: the first trained layer; layers `[0, cut)` are frozen.
        states: one `[len(example), hidden]` tensor per training example.
    """

    def __init__(self, model: nn.Module, cut: int, states: list[torch.Tensor]) -> None:
        self.model, self.cut, self.states = model, cut, states
        self.layers = decoder_layers(model)
        self._parent, self._name = _owner(model, self.layers)

    @classmethod
    def build(cls, model: nn.Module, examples: Sequence[Example], batch_tokens: int, *, neftune: bool = False,
              prompt_learning: bool = False, free_bytes: int | None = None,
              progress: bool = False, max_seconds: float | None = None) -> FrozenPrefix | None:
        """The cache for `examples`, or None where it does not apply (see the module docstring).

        `free_bytes` None skips the memory check (a resume of a run that used the cache); `progress`
        shows a bar over the examples (the build takes minutes on a CPU).

        Raises:
            BuildTooSlow: the build projects beyond `max_seconds` (given up part way).
        """
        cut = first_trained_layer(model)
        config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        if not cut or neftune or prompt_learning or config.model_type not in SUPPORTED or _has_dropout(config):
            return None
        param = next(model.parameters())
        need = sum(len(ex) for ex in examples) * config.hidden_size * param.element_size()
        if free_bytes is not None and need > MAX_CACHE_FRACTION * free_bytes:
            log.info("frozen-layer cache skipped: %.1f GiB would exceed a quarter of free memory", need / 2**30)
            return None
        prefix = cls(model, cut, _encode(model, cut, examples, batch_tokens, progress, max_seconds))
        return prefix if prefix._agrees(examples) else None

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)

    @contextlib.contextmanager
    def top_only(self) -> Iterator[None]:
        """Within the block the decoder runs only the trained layers (on `inputs_embeds` from `attach`)."""
        setattr(self._parent, self._name, nn.ModuleList(list(self.layers)[self.cut:]))
        try:
            yield
        finally:
            setattr(self._parent, self._name, self.layers)

    def attach(self, batch: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """`batch` (collated from the examples `rows`, in order) with the cached states as `inputs_embeds`."""
        if "attention_mask" in batch:  # a padded batch: one row per example, zeros where padded
            width = batch["input_ids"].shape[1]
            embeds = torch.zeros(len(rows), width, self.states[0].shape[1], dtype=self.states[0].dtype,
                                 device=self.states[0].device)
            for r, i in enumerate(rows):
                embeds[r, :len(self.states[i])] = self.states[i]
        else:
            embeds = torch.cat([self.states[i] for i in rows])[None]
        return {**batch, "inputs_embeds": embeds}

    def _agrees(self, examples: Sequence[Example]) -> bool:
        """One packed row's loss with the cache equals the plain forward's (eval mode: no dropout draws)."""
        from domaintune.models.loss import causal_lm_loss

        rows = pack_examples(examples[:64], max(512, max(len(ex) for ex in examples[:64])))[:1]
        batch = collate_packed([examples[i] for i in rows[0]])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                plain = float(causal_lm_loss(self.model, batch)[0])
                with self.top_only():
                    cached = float(causal_lm_loss(self.model, self.attach(batch, rows[0]))[0])
        finally:
            self.model.train(was_training)
        if abs(cached - plain) > CHECK_RTOL * max(1.0, abs(plain)):
            log.warning("frozen-layer cache disagrees with the model (loss %.6f vs %.6f); training without it",
                        cached, plain)
            return False
        return True


def _has_dropout(config: Any) -> bool:
    names = ("attention_dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
             "resid_pdrop", "embd_pdrop", "attn_pdrop")
    return any(float(getattr(config, name, 0.0) or 0.0) > 0 for name in names)


def _owner(model: nn.Module, layers: nn.ModuleList) -> tuple[nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is layers:
                return module, name
    raise ValueError("the decoder layer list has no parent module")


def _encode(model: nn.Module, cut: int, examples: Sequence[Example], batch_tokens: int,
            progress: bool = False, max_seconds: float | None = None) -> list[torch.Tensor]:
    """Each example's output of layer `cut - 1`, from packed rows with the forward stopped there.

    Raises:
        BuildTooSlow: the tokens done so far (at least `PROJECT_AFTER` of them) project a total
            beyond `max_seconds`.
    """
    layer = decoder_layers(model)[cut - 1]

    def capture(_module: nn.Module, _args: Any, output: Any) -> None:
        raise _Captured(output[0] if isinstance(output, tuple) else output)

    states: list[torch.Tensor | None] = [None] * len(examples)
    device = next(model.parameters()).device
    handle = layer.register_forward_hook(capture)
    was_training = model.training
    model.eval()
    total_tokens, done_tokens, started = sum(len(ex) for ex in examples), 0, time.perf_counter()
    try:
        with torch.no_grad(), bar(f"frozen layers 0-{cut - 1}", len(examples), progress) as advance:
            for row in pack_examples(examples, max(batch_tokens, max(len(ex) for ex in examples))):
                batch = collate_packed([examples[i] for i in row])
                try:
                    model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                          use_cache=False)
                except _Captured as done:
                    hidden = done.hidden[0]
                else:  # pragma: no cover - the hook always fires
                    raise RuntimeError("the frozen-layer hook did not fire")
                for i, part in zip(row, hidden.split([len(examples[i]) for i in row])):
                    states[i] = part.clone()
                advance(len(row))
                done_tokens += sum(len(examples[i]) for i in row)
                took = time.perf_counter() - started
                if max_seconds is not None and done_tokens >= PROJECT_AFTER * total_tokens \
                        and took * total_tokens / done_tokens > max_seconds:
                    raise BuildTooSlow(took * total_tokens / done_tokens)
    finally:
        handle.remove()
        model.train(was_training)
    return states  # type: ignore[return-value]
