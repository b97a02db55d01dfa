"""Training across the processes of `accelerate launch` (or torchrun): who does what, and the collectives.

    accelerate launch --multi_gpu --num_processes 8 -m domaintune train --config recipe.yaml  # 8 GPUs, NCCL
    accelerate launch --multi_gpu --num_processes 2 -m domaintune train --config recipe.yaml  # no CUDA: CPU, gloo
    torchrun --nproc_per_node 2 -m domaintune train --config recipe.yaml                       # the same, by hand

(`accelerate launch --cpu --num_processes 2` starts ONE process: accelerate runs several CPU
processes only through mpirun. `--multi_gpu` goes through torchrun, and on a machine without CUDA
this module picks gloo.) The recipe is the same as for one process; the launcher's environment
(WORLD_SIZE, RANK, ...) is all that changes, and with WORLD_SIZE unset or 1 every function here
leaves the single-process path exactly as it was. Design:

* Data: every process computes the same epoch order (a function of seed and epoch,
  `train/data.py`). A step takes `grad_accum x world` micro-batches and process r runs
  micro-batches r, r+W, ... So `train.grad_accum` is per process, and a run on W processes takes
  the same steps as one process with `grad_accum x W`.
* Loss weighting stays exact: the step's supervised-token count N is summed over processes
  before any backward, so each micro-batch still weighs n_i/N.
* Gradients: torch's FSDP2 (`train/sharding.py`): `train.distributed.strategy` ddp replicates the
  weights, fsdp2 shards them; either way gradients are SUM-reduced once per step, after the last
  micro-batch, and every process clips on the full norm and steps AdamW on its (shard of the)
  parameters.
* Validation is dealt out the same way (padded to equal counts: an FSDP2 forward is a collective)
  and its sums reduced: every process sees the same loss and takes the same decisions.
* Only process 0 writes (checkpoints, metrics.jsonl, progress bar, summary.json, the artifact).
  Checkpoints are taken at step boundaries only (mid-accumulation the gradients are partial per
  process) and hold every process's RNG state, so a resume with as many processes is exact (one
  with another count is refused unless forced). A Ctrl-C reaching any process is agreed on at
  the end of the step, then all checkpoint and stop (torchrun itself may terminate the workers
  on Ctrl-C first; `--resume` then starts from the last periodic checkpoint).
* An accelerate config asking for DeepSpeed or accelerate's FSDP is not what this loop runs: a
  warning points to `train.distributed` (this loop's FSDP2), see docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from domaintune.errors import UserError
from domaintune.models.loss import token_counts
from domaintune.train.rng import capture_rng, restore_rng
from domaintune.train.sharding import equal_shares
from domaintune.train.step import LossFn, accumulate_gradients, validation_sums

log = logging.getLogger(__name__)
T = TypeVar("T")

_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job: rank, process count, and its device.

    Attributes:
        rank: this process's index (0 writes every file).
        world: the number of processes; 1 means no distributed training at all.
        local_world: processes on this machine (they share its cores).
        device: the device this process trains on.
    """

    rank: int = 0
    world: int = 1
    local_world: int = 1
    device: torch.device = field(default_factory=_default_device)

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes files."""
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the launcher's process group (accelerate's `PartialState` owns it), or stay single.

    Reads WORLD_SIZE; when it is unset or 1, returns a single-process `Dist` and touches nothing.
    Otherwise gloo on CPU (`accelerate launch --cpu`, or no CUDA), NCCL on GPUs.

    Returns:
        This process's `Dist`.

    Example:
        >>> init_distributed().world   # without a launcher
        1
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=cpu)
    if os.environ.get(_DEEPSPEED, "").lower() == "true" and state.process_index == 0:
        log.warning("DeepSpeed was asked for in the accelerate config, but domaintune's loop does not drive it: "
                    "training with train.distributed (torch's FSDP2; strategy: fsdp2 shards like ZeRO-3), "
                    "see docs/distributed.md")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    return Dist(state.process_index, state.num_processes, local, state.device)


def rank_seed(seed: int, dist: Dist) -> int:
    """The seed for this process's dropout and noise: the run's on process 0, another on each other one."""
    return seed + dist.rank


def shard(items: Sequence[T], dist: Dist) -> list[T]:
    """This process's share: items r, r+W, r+2W, ... (all of them with one process)."""
    return list(items[dist.rank::dist.world])


def all_reduce_sums(values: Sequence[float], dist: Dist) -> list[float]:
    """Sum numbers over processes (in float64, exact for token counts below 2**53)."""
    if not dist.active:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def step_totals(batches: Sequence[Mapping[str, torch.Tensor]], dist: Dist) -> tuple[int, int]:
    """`(supervised, tokens)` of the whole step: this process's micro-batches counted, then summed over all."""
    counts = [token_counts(b) for b in batches]
    tokens, supervised = all_reduce_sums([sum(t for t, _ in counts), sum(n for _, n in counts)], dist)
    return int(supervised), int(tokens)


def accumulate_across(model: Any, batches: Sequence[dict[str, torch.Tensor]], loss_fn: LossFn,
                      stopping: Callable[[], bool],
                      dist: Dist) -> tuple[float, int, int, bool]:
    """`step.accumulate_gradients` over this process's share of a step, then the sums over every process.

    Each micro-batch weighs n_i/N with N the whole step's supervised tokens; FSDP2 sums the
    gradients in the last backward; the token losses are summed and a Ctrl-C on any process is agreed on.

    Args:
        model, loss_fn: as in `accumulate_gradients`.
        batches: this process's micro-batches (`BatchStream.take(..., part=(rank, world))`).
        stopping: whether this process was asked to stop, read once its micro-batches are done.
        dist: this process's `Dist`.

    Returns:
        `(loss_sum, supervised, tokens, stop)` of the whole step, the same on every process.
    """
    totals = step_totals(batches, dist)
    loss_sum, supervised, tokens = accumulate_gradients(model, batches, 0, None, loss_fn, totals)
    loss_sum, stops = all_reduce_sums([loss_sum, float(stopping())], dist)
    return loss_sum, supervised, tokens, stops > 0


def broadcast_parameters(params: Mapping[str, torch.Tensor], dist: Dist) -> None:
    """Copy process 0's values of `params` to every process, so all replicas start alike."""
    if not dist.active:
        return
    with torch.no_grad():
        for p in params.values():
            torch.distributed.broadcast(p.data, src=0)


def broadcast_object(obj: T, dist: Dist) -> T:
    """Process 0's `obj` on every process (picklable; small things only)."""
    if not dist.active:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=dist.device)
    return box[0]


def barrier(dist: Dist) -> None:
    """Wait for every process (nothing with one)."""
    if dist.active:
        torch.distributed.barrier()


def gather_rng(dist: Dist) -> list[dict[str, Any]] | None:
    """Every process's RNG state (`rng.capture_rng`), on process 0 (None elsewhere and with one process)."""
    if not dist.active:
        return None
    states: list[Any] | None = [None] * dist.world if dist.main else None
    torch.distributed.gather_object(capture_rng(), states, dst=0)
    return states


def restore_rank_rng(saved: Sequence[dict[str, Any]] | None, dist: Dist) -> bool:
    """On a process other than 0, restore its own RNG state from `gather_rng`'s list (minus entry 0).

    Returns:
        False when there is nothing for this process (another process count): the caller reseeds.
    """
    if not dist.active or dist.main:
        return True
    if saved is None or len(saved) != dist.world - 1:
        return False
    restore_rng(saved[dist.rank - 1])
    return True


def check_world(saved_world: int, micro_step: int, dist: Dist, force: bool) -> None:
    """Refuse to resume with another process count (the global batch would change) unless forced.

    Raises:
        UserError: the count differs and `force` is False, or several processes would resume a
            one-process checkpoint taken mid-accumulation.
    """
    if dist.active and micro_step:
        raise UserError("this checkpoint was taken mid-accumulation by one process; several cannot resume it",
                        hint="resume it with one process, or start over with --force")
    if saved_world != dist.world and not force:
        raise UserError(f"the checkpoint was written by {saved_world} process(es), this run has {dist.world}: "
                        "the global batch would change", hint=f"launch {saved_world} process(es), or pass --force")


def validation_loss_across(model: Any, batches: Sequence[dict[str, torch.Tensor]], dist: Dist) -> float | None:
    """`step.validation_loss` over every process: each takes its share of `batches`, the sums are reduced.

    Returns:
        The token-weighted loss (the same on every process), or None with no supervised token.
    """
    return validation_across(model, batches, dist)[0]


def validation_across(model: Any, batches: Sequence[dict[str, torch.Tensor]],
                      dist: Dist) -> tuple[float | None, float | None]:
    """`(loss, closed-set accuracy)` over every process (`step.validation_sums`, reduced).

    The accuracy (percent) is greedy closed-set decoding's, computed from the same forward pass
    (`models.loss.closed_set_hits`); None when no validation example carries decisions.
    """
    if not dist.active:
        total, count, hits, examples = validation_sums(model, batches)
    else:
        mine, counted = equal_shares(batches, dist.rank, dist.world)
        sums = validation_sums(model, mine[:counted])
        if len(mine) > counted:  # the padding runs (every process forwards as often) and is not counted
            validation_sums(model, mine[counted:])
        total, count, hits, examples = all_reduce_sums(sums, dist)
    marked = any("choice_positions" in b for b in batches)
    return (total / count if count else None), (100.0 * hits / examples if marked and examples else None)
