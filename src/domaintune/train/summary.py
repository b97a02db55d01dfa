"""Facts about a training run: the memory estimate before it, and summary.json after it.

Before training, `estimate_memory` adds up parameters, gradients, AdamW states and activations,
and `memory_warning` compares that with the free RAM (or GPU memory). After training,
`write_summary` records token counts, speed, peak memory, estimated MFU and lineage hashes of the
data, the recipe and the base weights, so a run can be traced back to exactly what made it.

FLOPs convention (PaLM's MFU, no recomputation counted): per trained token the forward costs
2·N, the backward through activations 2·N, and weight gradients 2·N_trainable, where N excludes
the input-embedding lookup (it does no multiply-adds). LoRA is then ≈ 4·N per token and full
fine-tuning 6·N, as is usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from domaintune.files import write_json_atomic, write_text_atomic
from domaintune.methods.base import trainable_report
from domaintune.train.checkpoint import TrainState
from domaintune.models.loss import token_counts

log = logging.getLogger(__name__)
_console = Console(stderr=True)

# Activation values kept for backward, per token, per hidden unit, per decoder layer: 34 bytes in
# 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation", without the s² attention
# term that sdpa/flash attention never materialize) = 17 values.
ACTIVATION_VALUES = 17
# CE on fp32 logits keeps the logits and their softmax/gradient: two vocabulary-wide fp32 rows per
# supervised token (an upper bound: every token counted as supervised).
LOGIT_BYTES_PER_VOCAB = 2 * 4
PEAK_FLOPS_FILE = "peak_flops.json"
HASH_CACHE_FILE = "sha256-cache.json"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step is expected to hold at its peak."""

    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    gathered: int = 0  # fsdp2: whole units (weights, then their gradients) held beside the shards at the peak

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.logits + self.gathered

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "activation_values_per_token_hidden_layer": ACTIVATION_VALUES}


def estimate_memory(model: nn.Module, batch_tokens: int, gradient_checkpointing: bool,
                    activation_bytes: int = 4, world: int = 1, strategy: str = "ddp",
                    reshard_after_forward: bool = True) -> MemoryEstimate:
    """Estimate one process's peak training memory.

    Args:
        model: the model, method already applied (sharded or not: sizes are the whole tensors').
        batch_tokens: tokens in one micro-batch (a packed row, or batch_size × longest example).
        gradient_checkpointing: only layer inputs are kept, plus one layer's activations.
        activation_bytes: bytes per activation value (4 on CPU fp32, 2 under bf16 autocast).
        world: processes; with `strategy` "fsdp2" each holds 1/world of the parameters,
            gradients and optimizer states, plus the units it has gathered: the root's and two
            decoder layers' (the one running and the one prefetched) with `reshard_after_forward`,
            else every layer's (gathered in forward, kept until backward).
        strategy: "ddp" (every process holds everything, as one process) or "fsdp2".

    Returns:
        The estimate: params + grads of trainable params + AdamW's two fp32-or-param-dtype states
        + activations (`batch_tokens × hidden × layers × ACTIVATION_VALUES`) + CE logits.
    """
    params = list(model.parameters())  # a tied tensor once
    trainable = [p for p in params if p.requires_grad]
    config = model.config.get_text_config()
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kept = (layers + ACTIVATION_VALUES) if gradient_checkpointing else layers * ACTIVATION_VALUES
    size = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    if world > 1 and strategy == "fsdp2":
        from domaintune.methods.base import decoder_layers

        units = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in decoder_layers(model)]
        trained = [sum(p.numel() * p.element_size() for p in layer.parameters() if p.requires_grad)
                   for layer in decoder_layers(model)]
        gathered = size - sum(units) + (2 * max(units) if reshard_after_forward else sum(units)) + 2 * max(trained)
        shard_params, grads, optimizer = size / world, grads / world, 2 * grads / world
    else:
        shard_params, optimizer, gathered = size, 2 * grads, 0
    return MemoryEstimate(
        params=round(shard_params), grads=round(grads), optimizer=round(optimizer), gathered=round(gathered),
        activations=batch_tokens * hidden * kept * activation_bytes,
        logits=batch_tokens * config.vocab_size * LOGIT_BYTES_PER_VOCAB)


def report_memory(model: nn.Module, batch_tokens: int, gradient_checkpointing: bool, world: int = 1,
                  strategy: str = "ddp", reshard_after_forward: bool = True) -> MemoryEstimate:
    """Print the peak-memory estimate for the model's device (per process under a launcher); log a
    warning when it will not fit."""
    device = next(model.parameters()).device
    estimate = estimate_memory(model, batch_tokens, gradient_checkpointing, 2 if device.type == "cuda" else 4,
                               world, strategy, reshard_after_forward)
    available, what = available_memory(device)
    each = f" per process ({strategy}, {world} processes)" if world > 1 else ""
    _console.print(f"estimated peak memory {_gib(estimate.total)}{each}"
                   + (f" ({what}: {_gib(available)})" if available is not None else ""))
    warning = memory_warning(estimate, available, what)
    if warning:
        log.warning(warning)
    return estimate


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """Free memory on the device the run trains on: (bytes or None, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "free GPU memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def memory_warning(estimate: MemoryEstimate, available: int | None, what: str) -> str | None:
    """A warning line when the estimate exceeds the available memory, else None."""
    if available is None or estimate.total <= available:
        return None
    return (f"estimated peak memory {_gib(estimate.total)} (params {_gib(estimate.params)}, grads "
            f"{_gib(estimate.grads)}, AdamW {_gib(estimate.optimizer)}, activations {_gib(estimate.activations)}, "
            f"logits {_gib(estimate.logits)}) exceeds {what} {_gib(available)}; lower train.batch_tokens, turn on "
            "train.gradient_checkpointing, or use a method with fewer trainable parameters (lora)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def flops_per_token(model: nn.Module) -> int:
    """Training FLOPs per token: 4·N + 2·N_trainable, N without the input-embedding lookup."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters()) - embedding.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainable -= embedding.numel() if embedding.requires_grad else 0
    return 4 * total + 2 * trainable


def device_key(device: torch.device, threads: int) -> str:
    """The key a measured peak FLOP/s is stored under, e.g. "cuda:NVIDIA H100 80GB HBM3"."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_name()}:{threads}t"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_flops_for(key: str, given: float | None, home: Path | None) -> tuple[float | None, str]:
    """The peak FLOP/s to divide by: the argument, else `home/peak_flops.json[key]`; else None and why."""
    if given:
        return given, "peak FLOP/s given by the caller"
    file = home / PEAK_FLOPS_FILE if home is not None else None
    if file is not None and file.is_file():
        measured = json.loads(file.read_text(encoding="utf-8")).get(key)
        if measured:
            return float(measured), f"peak FLOP/s measured for {key} ({file})"
    return None, (f"MFU not computed: no peak FLOP/s known for {key}; pass peak_flops or add "
                  f'{{"{key}": <FLOP/s>}} to {file or PEAK_FLOPS_FILE}')


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak memory of this process so far: max RSS, and the CUDA allocator's peak on GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024}  # Linux reports KiB
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file; with `cache_dir`, remembered by (size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    cache_file = cache_dir / HASH_CACHE_FILE if cache_dir is not None else None
    cache = _read_cache(cache_file)
    entry = cache.get(str(path))
    if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
        return entry["sha256"]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if cache_file is not None:
        cache = {name: entry for name, entry in cache.items() if Path(name).exists()}  # forget deleted files
        cache[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        _write_cache(cache_file, cache)
    return digest


def _read_cache(file: Path | None) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8")) if file is not None and file.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a re-hash


def _write_cache(file: Path, cache: dict[str, Any]) -> None:
    try:
        write_json_atomic(file, cache)
    except OSError:
        pass  # read-only home: hashing still works, just again next time


def weights_sha256(model_path: Path, cache_dir: Path | None = None) -> dict[str, str]:
    """{file name: sha256} of a model folder's safetensors files (remembered by size and mtime)."""
    return {f.name: file_sha256(f, cache_dir) for f in sorted(Path(model_path).glob("*.safetensors"))}


def lineage(train_records: Any, val_records: Any, recipe_yaml: str, model_path: Path | None,
            cache_dir: Path | None = None) -> dict[str, Any]:
    """sha256 of the data files (from `train.data.Split`), the resolved recipe and the base weights."""
    def data(records: Any) -> dict[str, Any] | None:
        path = getattr(records, "path", None)
        return {"path": str(path), "sha256": records.sha256} if path is not None else None

    weights = None
    if model_path is not None:
        weights = {"path": str(model_path), "files": weights_sha256(model_path, cache_dir)}
    return {"train_data": data(train_records), "val_data": data(val_records),
            "recipe_sha256": hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest(), "base_model": weights}


def build_summary(model: nn.Module, state: TrainState, *, method: str, reason: str, total_steps: int,
                  epochs: float, packing: bool, memory: MemoryEstimate, records: Sequence[Any],
                  dropped: Sequence[dict], n_examples: int, val_batches: Sequence[dict[str, torch.Tensor]],
                  recipe_yaml: str, model_path: Path | None, peak_flops: float | None,
                  home: Path | None, select_by: str = "loss") -> dict[str, Any]:
    """The contents of summary.json for a finished run.

    Args:
        model: the trained model. state: the loop's final `TrainState` (counters live in `extra`).
        method, reason, total_steps, epochs, packing: run facts to record.
        memory: the estimate made before training.
        records, dropped: (train, val) records and their skip counts.
        n_examples: training examples kept. val_batches: the collated validation batches.
        recipe_yaml, model_path: for the lineage hashes.
        peak_flops, home: the peak FLOP/s given, and the folder holding peak_flops.json.
        select_by: the metric that picked the best step (`best_metric`, `base_metric` are its values).

    `seconds` is the loop's wall time (validation and checkpoints included, summed over resumes),
    `train_seconds` the optimizer steps alone; `tokens_per_s` and `mfu` count every input token
    (not only supervised ones) over `train_seconds`. `peak_rss_bytes` also holds the interpreter,
    torch and the memory-mapped base weights, which the memory estimate leaves out.
    """
    extra, device = state.extra, next(model.parameters()).device
    speed = extra["tokens"] / extra["train_seconds"] if extra["train_seconds"] else None
    per_token, key = flops_per_token(model), device_key(device, torch.get_num_threads())
    peak, note = peak_flops_for(key, peak_flops, home)
    report, val_counts = trainable_report(model), [token_counts(b) for b in val_batches]
    return {
        "method": method, "stop_reason": reason, "steps": state.step, "total_steps": total_steps, "epochs": epochs,
        "base_val_loss": extra.get("base_val_loss"), "best_step": state.best_step,
        "best_val_loss": extra.get("best_val_loss", state.best_metric) if select_by != "loss" else state.best_metric,
        "select_by": select_by, "best_metric": state.best_metric, "base_metric": extra.get("base_metric"),
        "final_val_loss": extra["evals"][-1][1] if extra["evals"] else None,
        "train": {"records": len(records[0]), "examples": n_examples, "dropped": dict(dropped[0]),
                  "tokens": extra["tokens"], "supervised_tokens": extra["supervised_tokens"]},
        "val": {"records": len(records[1]), "dropped": dict(dropped[1]), "tokens": sum(t for t, _ in val_counts),
                "supervised_tokens": sum(n for _, n in val_counts)},
        "seconds": round(extra["seconds"], 3), "train_seconds": round(extra["train_seconds"], 3),
        "tokens_per_s": speed, "trainable_params": report.trainable, "total_params": report.total,
        "device": key, "threads": torch.get_num_threads(), "packing": packing,
        "memory_estimate": memory.as_dict(), "peak_memory": peak_memory(device),
        "flops_per_token": per_token, "peak_flops": peak,
        "mfu": speed * per_token / peak if peak and speed else None, "mfu_note": note,
        "lineage": lineage(records[0], records[1], recipe_yaml, model_path, home),
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write summary.json whole (indented, keys in insertion order)."""
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
