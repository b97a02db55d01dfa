"""Several processes on torch's own engine: FSDP2 (`fully_shard`) for both data parallel and sharding.

    train:
      distributed: {strategy: fsdp2, reshard_after_forward: true, cpu_offload: false}

`shard_model` runs once, after the method is applied (LoRA etc.) and before the optimizer is
built, the way torchtune and torchtitan do it: each decoder layer becomes one FSDP unit, then the
root (embeddings, final norm and a tied LM head in one unit). The strategy picks the mesh:

* `ddp`: a (W, 1) mesh, "replicate" x "shard": every process keeps every weight (a shard group
  of one), gradients are all-reduced across the replicas: data parallel on FSDP2's machinery
  (HSDP with shards of one), so both strategies share one code path.
* `fsdp2`: a (W,) mesh: parameters, gradients and AdamW's moments are split into W shards,
  gathered layer by layer for forward and backward.

The loop's loss is already exact over the whole step (each micro-batch weighs n_i/N, N the step's
supervised tokens over every process), so gradients must be SUMMED, not averaged: every FSDP unit
gets `set_gradient_divide_factor(1.0)` and `set_force_sum_reduction_for_comms(True)` (which also
steps around gloo's AVG, pytorch/pytorch#162338). Reduction runs once per step: the micro-batches
before the last run with `set_requires_gradient_sync(False)` (`sync_gradients`).

Parameters are DTensors from then on. What leaves a process is full tensors: `full_tensor` for a
checkpoint (every process takes part; process 0 writes, in the one-process format, so a run saved
on 2 processes resumes on 1), `load_full` to put full tensors back into the shards, and
`full_weights` for the artifact, saved by the method's own `save` as one process would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from domaintune.errors import UserError
from domaintune.methods.base import decoder_layers

__all__ = ["Gathered", "full", "full_weights", "is_sharded", "load_full", "localize_optimizer_state",
           "shard_model", "sync_gradients"]


def shard_model(model: nn.Module, dist: Any, strategy: str = "ddp", reshard_after_forward: bool = True,
                cpu_offload: bool = False) -> nn.Module:
    """Make `model` (method applied, replicas alike) an FSDP2 model over `dist`'s processes, in place.

    Args:
        model: the model every process built the same way (`broadcast_parameters` first).
        dist: this process's `distributed.Dist` (active).
        strategy: "ddp" (replicated) or "fsdp2" (sharded).
        reshard_after_forward, cpu_offload: fsdp2's memory switches (see the recipe field).

    Returns:
        `model` itself, now sharded.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    kind = dist.device.type
    if strategy == "fsdp2":
        mesh = init_device_mesh(kind, (dist.world,), mesh_dim_names=("shard",))
    else:
        mesh = init_device_mesh(kind, (dist.world, 1), mesh_dim_names=("replicate", "shard"))
    offload = CPUOffloadPolicy() if cpu_offload and strategy == "fsdp2" else OffloadPolicy()
    reshard = reshard_after_forward if strategy == "fsdp2" else False
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
            # An MoE expert that no token of this process reached still takes part (with zeros).
            module.set_reduce_scatter_unused_params(True, recurse=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `shard_model` was applied to `model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def sync_gradients(model: nn.Module, last: bool) -> None:
    """Before a micro-batch's backward: reduce gradients only in the step's last one."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        model.set_is_last_backward(last)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process calls it), a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _local_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a full tensor) split like `param` (a DTensor), or as it is for a plain parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value.to(param.device)
    local = param.to_local()
    return distribute_tensor(value.to(device=local.device, dtype=param.dtype), param.device_mesh, param.placements)


@torch.no_grad()
def load_full(params: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> None:
    """Copy full tensors (a checkpoint's) into `params`, each process keeping its shard."""
    for name, param in params.items():
        param.copy_(_local_like(weights[name], param))


class Gathered:
    """The trainable weights and AdamW state of a sharded run as full tensors, as one process holds them.

    `checkpoint.save_checkpoint` takes it in place of the parameters and the optimizer (it has
    `state_dict()` and `param_groups`), so a sharded run writes the same files as one process.
    Every process builds it (the gathers are collectives); process 0 writes.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.trainable = {name: full(p.detach()).cpu() for name, p in params.items()}
        by_id = {id(p): self.trainable[name] for name, p in params.items()}
        state = optimizer.state_dict()
        state["state"] = {index: {key: full(v).cpu() if isinstance(v, torch.Tensor) and v.dim() else v
                                  for key, v in entry.items()}
                          for index, entry in state["state"].items()}
        self._state = state
        self.param_groups = [{**g, "params": [by_id[id(p)] for p in g["params"]]} for g in optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return self._state


def localize_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's optimizer state (full tensors) split like the optimizer's sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = {**state, "state": {}}
    for index, entry in state["state"].items():
        param = params[int(index)]
        out["state"][index] = {key: _local_like(v, param) if isinstance(v, torch.Tensor) and v.shape == param.shape
                               else v for key, v in entry.items()}
    return out


@contextlib.contextmanager
def full_weights(model: nn.Module, main: bool) -> Iterator[None]:
    """Inside: on process 0 (`main`), `model` holds plain full parameters, so a method's `save`
    (PEFT's `save_pretrained`, safetensors) writes what one process would. Every process takes part
    in the gathers; the others hold nothing extra. The shards are back on exit."""
    if not is_sharded(model):
        yield
        return
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    hooks: list[tuple[nn.Module, dict]] = []
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            whole = full(param.detach())
            if main:
                swapped.append((module, name, param))
                module._parameters[name] = nn.Parameter(whole, requires_grad=param.requires_grad)
        if main and module._state_dict_pre_hooks:  # FSDP's hook would put the shards back for state_dict()
            hooks.append((module, dict(module._state_dict_pre_hooks)))
            module._state_dict_pre_hooks.clear()
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
        for module, saved in hooks:
            module._state_dict_pre_hooks.update(saved)


def equal_shares(batches: Sequence[Any], rank: int, world: int) -> tuple[list[Any], int]:
    """This process's validation batches r, r+W, ..., padded to the same count on every process
    (an FSDP2 forward is a collective: every process must run as many); returns them and how many
    of them count (the padding repeats batch 0 and is not counted)."""
    mine = list(batches[rank::world])
    each = -(-len(batches) // world) if batches else 0
    return (mine + [batches[0]] * (each - len(mine)) if batches else []), len(mine)


def refuse_unsupported(strategy: str, ewc: bool, decodes: bool) -> None:
    """What several processes do not do yet, as a clear error before any work."""
    if ewc:
        raise UserError("train.ewc is not available with several processes yet",
                        hint="train on one process, or guard against forgetting with train.replay")
    if decodes and strategy == "fsdp2":
        raise UserError("under fsdp2, validation cannot decode answers for a task metric (every process would have "
                        "to decode in step)", hint="set train.select_by to loss or accuracy, or strategy: ddp")
