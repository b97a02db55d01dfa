"""Continuous batching: rows join a running batch between decoding steps.

`models.decode.decode_stream` decodes a fixed set of prompts: a request that arrives while it runs
waits for the whole batch to end. With clients that send one request after another that means
no batching at all (each arrives while the other's batch runs). `RunningBatch` keeps the decoding
state between steps, so a server can prefill new prompts and merge them into the batch at any step,
as vLLM and TGI schedule per iteration.

The state is `decode.py`'s, row for row: left-padded KV cache, a 2-D attention mask, per-row
position ids and per-row samplers. Joining pads the shorter side's cache on the left (masked out)
so both have the same length, then concatenates along the batch dimension; a padded row still sees
exactly its own tokens at its own positions, so a row decodes the same tokens whether it joined
a running batch or decoded alone (the tests check greedy ids). Rows leave with
`Cache.batch_select_indices`, as in `decode.py`, and the cache columns no remaining row attends
to are dropped with them, so a batch that never empties stays as wide as its longest row.

Joining needs a cache whose layers are plain `DynamicLayer`s (key/value tensors that grow along
the sequence). Models whose caches are anything else (sliding-window layers, prompt/prefix tuning,
which `decode.py` runs uncached) report `supports(model) == False`; the server then batches them
the old way, one fixed batch at a time.

    batch = RunningBatch(model, pad_id=0)
    batch.add([7, 8], [[1, 2, 3], [4, 5]], [SamplingParams(max_new_tokens=8)] * 2)
    while batch:
        for key, token in batch.pick():
            ...                           # hand the tokens on
        batch.advance(should_stop)        # rows that are done leave, the rest decode one step
        batch.add(...)                    # new rows join here
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.models.decode import (Sampler, SamplingParams, check_request, is_prompt_learning, left_pad,
                                      model_device, pick_all)

__all__ = ["RunningBatch", "supports"]


def supports(model: Any) -> bool:
    """Whether rows can join `model`'s running batches (False: prompt/prefix tuning, and models
    with sliding-window attention, whose cache drops old positions row by row and cannot take
    a left-padded row in)."""
    return not is_prompt_learning(model) and not sliding_window(getattr(model, "config", None))


def sliding_window(config: Any) -> bool:
    """Whether `config` attends through a sliding window in some layer.

    Example:
        >>> from types import SimpleNamespace as C
        >>> sliding_window(C(sliding_window=4096)), sliding_window(C(sliding_window=4096, use_sliding_window=False))
        (True, False)
        >>> sliding_window(C(layer_types=["full_attention", "sliding_attention"])), sliding_window(C())
        (True, False)
    """
    types = getattr(config, "layer_types", None)
    if types:
        return any("sliding" in str(kind) for kind in types)
    if getattr(config, "use_sliding_window", True) is False:
        return False
    return bool(getattr(config, "sliding_window", None))


class RunningBatch:
    """The decoding state of the rows running now; `add` between `step`s.

    Args:
        model: a causal LM or a peft model around one (not prompt/prefix tuning), in eval mode.
        pad_id: the id written into left padding.
        confidences: filled with `key -> probability of its answer` when a row decoded with
            `SamplingParams.choices` completes its answer (by the `pick` that returns its last token).
    """

    def __init__(self, model: Any, pad_id: int, confidences: dict[Hashable, float] | None = None) -> None:
        self.model, self.pad_id, self.device = model, pad_id, model_device(model)
        self.confidences = confidences
        self._reset()

    def _reset(self) -> None:
        self.keys: list[Hashable] = []
        self._params: list[SamplingParams] = []
        self._samplers: list[Sampler] = []
        self._counts: list[int] = []
        self._picked: list[int] = []
        self._cache: Any = None
        self._mask = self._positions = self._logits = None

    def __len__(self) -> int:
        return len(self.keys)

    @torch.inference_mode()
    def add(self, keys: Sequence[Hashable], prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> None:
        """Prefill `prompts` and merge them into the batch; their first tokens come with the next `step`.
        When it raises, the rows already running are unchanged and can go on.

        Raises:
            ValueError: as `decode.decode_stream` for a bad prompt or parameter, or a cache
                that cannot be joined (see the module docstring).
        """
        for prompt, p in zip(prompts, params, strict=True):
            check_request(prompt, p)
            if p.max_new_tokens < 1:
                raise ValueError("rows joining a running batch need max_new_tokens >= 1")
        if not prompts:
            return
        ids, mask, positions = left_pad(prompts, self.pad_id, self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        state = (out.cache, mask, positions[:, -1:], out.logits[:, -1, :])
        if self._cache is None:
            self._cache, self._mask, self._positions, self._logits = state
        else:
            self._join(*state)
        self.keys += list(keys)
        self._params += list(params)
        self._samplers += [Sampler(p, self.device) for p in params]
        self._counts += [0] * len(prompts)

    def step(self, should_stop: Callable[[Hashable], bool] | None = None) -> list[tuple[Hashable, int]]:
        """`pick`, then `advance`: one whole decoding step; returns what `pick` returned."""
        produced = self.pick()
        self.advance(should_stop)
        return produced

    def pick(self) -> list[tuple[Hashable, int]]:
        """Every running row's next token, as `(key, token)`; call `advance` before picking again."""
        self._picked = pick_all(self._samplers, self._logits)
        if self.confidences is not None:  # known as soon as an answer of a closed set is complete
            for key, sampler, token in zip(self.keys, self._samplers, self._picked):
                if sampler.cursor is not None and sampler.finished(token):
                    self.confidences[key] = sampler.confidence
        return list(zip(self.keys, self._picked))

    @torch.inference_mode()
    def advance(self, should_stop: Callable[[Hashable], bool] | None = None) -> None:
        """Drop the rows done after their picked token, and run the model one step for the others.

        Args:
            should_stop: called with a row's key after its token was picked (and, when the caller
                looked at the tokens first, handed on); True drops the row.
        """
        stop = should_stop or (lambda _key: False)
        tokens, keep = self._picked, []
        for i, (key, token) in enumerate(zip(self.keys, tokens)):
            self._counts[i] += 1
            sampler = self._samplers[i]
            if not (sampler.finished(token) or self._counts[i] >= self._params[i].max_new_tokens or stop(key)):
                keep.append(i)
        self._select(keep)
        if keep:
            step_ids = torch.tensor([tokens[i] for i in keep], dtype=torch.long, device=self.device)[:, None]
            self._mask = torch.cat([self._mask, self._mask.new_ones((len(keep), 1))], dim=1)
            self._positions = self._positions + 1
            out = self.model(input_ids=step_ids, attention_mask=self._mask, position_ids=self._positions,
                             cache=self._cache, use_cache=True, logits_to_keep=1)
            self._logits = out.logits[:, -1, :]

    def _select(self, keep: list[int]) -> None:
        if len(keep) == len(self.keys):
            return
        if not keep:
            self._reset()  # empty: the next add starts afresh
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions = self._mask[index], self._positions[index]
        for name in ("keys", "_params", "_samplers", "_counts"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])
        self._trim()

    def _trim(self) -> None:
        # A batch that never empties would otherwise keep every column any row ever had: the
        # longest row leaves, the left padding the others got for it stays, and the cache only
        # grows (a 5-minute soak took the server from 968 to 1,987 MiB). Columns that no running
        # row attends to are dropped; positions are per row, so no row's tokens change.
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self._mask.shape[1]
        if start == 0:
            return
        for layer in _layers(self._cache):
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        self._mask = self._mask[:, start:]

    @property
    def width(self) -> int:
        """Columns of the KV cache now (the longest running row's tokens so far, after trimming)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def _join(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor) -> None:
        # Everything is computed before anything is assigned: a join that fails (out of memory, a
        # cache that cannot be joined) leaves the running rows exactly as they were.
        old, new = _layers(self._cache), _layers(cache)
        width = max(self._mask.shape[1], mask.shape[1])
        merged = [(torch.cat([_left(a.keys, width, dim=2), _left(b.keys, width, dim=2)]),
                   torch.cat([_left(a.values, width, dim=2), _left(b.values, width, dim=2)]))
                  for a, b in zip(old, new, strict=True)]
        state = (torch.cat([_left(self._mask, width, dim=1), _left(mask, width, dim=1)]),
                 torch.cat([self._positions, positions]), torch.cat([self._logits, logits]))
        for layer, (keys, values) in zip(old, merged, strict=True):
            layer.keys, layer.values = keys, values
        self._mask, self._positions, self._logits = state


def _layers(cache: Any) -> list[Any]:
    from transformers.cache_utils import DynamicLayer

    layers = list(getattr(cache, "layers", ()))
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise ValueError(f"rows cannot join a {type(cache).__name__} with these layers; decode in fixed batches")
    return layers


def _left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad `t` on the left of `dim` up to `width` (cache and mask padding is masked out)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)
