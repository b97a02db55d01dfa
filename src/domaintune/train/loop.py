"""The training loop behind `domaintune train`: plain PyTorch over padding-free batches.

    result = run_training(model, tok, template, get_method("lora"), LoraOptions(), train, val, cfg,
                          Path("runs/run"), recipe_yaml)
    result.best_val_loss < result.base_val_loss

No HF Trainer: its checkpoints pickle the optimizer and RNG states, ours are safetensors + JSON
(`train/checkpoint.py`). Where things live:

* `train/step.py`: one step's arithmetic. One optimizer step is `grad_accum` micro-batches, each
  micro-batch's mean loss scaled by its share of the step's supervised tokens, so accumulation
  equals one big batch whatever the row lengths (torchtune #2307).
* `train/run.py`: one run in one folder (optimizer, schedule, validation, early stopping,
  checkpoints, EWC, the best-step artifact). The data order is a function of (seed, epoch)
  (`train/data.py`); the position plus optimizer, scheduler, RNG and accumulated gradients make a
  CPU resume bit-identical. Ctrl-C checkpoints (mid-accumulation if need be) and stops.
* `train/inputs.py` + `train/forgetting.py`: replay, curriculum, term weights, EWC reference.
* `train/stages.py`: `train.stages`, one run per stage, the model carried over.
* `train/distributed.py` + `train/sharding.py`: the same recipe under `accelerate launch` or
  torchrun (FSDP2, replicated or sharded by `train.distributed`; process 0 writes), e.g. `accelerate launch --multi_gpu --num_processes 2 -m domaintune train --config r.yaml`.
* fp32 on CPU; fp32 master weights with bf16 autocast on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from domaintune.config import TrainConfig
from domaintune.errors import UserError
from domaintune.methods.base import check_base, load_into, read_method_file, trainable_report
from domaintune.models.codec import pad_id as codec_pad_id
from domaintune.train.data import load_split
from domaintune.train.distributed import Dist, broadcast_parameters, init_distributed, rank_seed
from domaintune.train.sharding import refuse_unsupported, shard_model
from domaintune.train.inputs import build_inputs
from domaintune.models.loss import causal_lm_loss
from domaintune.methods.artifact import RECIPE_FILE, SUMMARY_FILE, find_artifact
from domaintune.train.run import FULL_WEIGHT_METHODS, Shared, TrainResult, seed_all, train_run
from domaintune.train.selection import LOSS, TaskMetric
from domaintune.train.stages import run_stages
from domaintune.train.step import LossFn, accumulate_gradients, lr_factor, validation_loss

__all__ = ["FULL_WEIGHT_METHODS", "RECIPE_FILE", "SUMMARY_FILE", "TrainResult", "accumulate_gradients", "lr_factor",
           "run_training", "validation_loss"]

_console = Console(stderr=True)


def run_training(model: Any, tokenizer: Any, template: Any, method: Any, method_opts: Any,
                 train_records: Sequence[dict], val_records: Sequence[dict], cfg: TrainConfig, run_dir: Path,
                 recipe_yaml: str, resume: bool = False, force: bool = False, model_path: Path | None = None,
                 callbacks: Sequence[Any] = (), *, progress: bool = True, peak_flops: float | None = None,
                 loss_fn: LossFn | None = None, select_by: str = LOSS,
                 task_metric: TaskMetric | None = None, choices: Any = None) -> TrainResult:
    """Fine-tune `model` with `method` on prepared records and save the best weights.

    Args:
        model: the base causal LM (fp32), as `models.load.load_model` returns it.
        tokenizer, template: the model's tokenizer and chat template.
        method, method_opts: a registered method (`methods.get_method`) and its options.
        train_records, val_records: prepared records (`train.data.load_split`; its path and sha256
            go into the lineage). An empty validation set turns off validation and early stopping.
            With `cfg.stages`, they are the data of every stage that sets no `data_dir`.
        cfg: the recipe's train section.
        run_dir: output folder: adapter/ or model/, checkpoints/, metrics.jsonl, summary.json, loss.png
            (with stages: stage-1/, stage-2/, ... each holding those, plus the final adapter/ or model/).
        recipe_yaml: the resolved recipe, written to run_dir/recipe.resolved.yaml and into checkpoints.
        resume: continue from the newest complete checkpoint in run_dir (with stages: skip the
            finished ones and continue the one in progress).
        force: resume despite a changed recipe; without resume, delete old checkpoints and start over.
        model_path: the base model folder (lineage hashes; tokenizer folder for prompt init_text).
        callbacks: extra callbacks (see `train.callbacks`); with stages, each stage is one run to them.
        progress: show a progress bar (only on a terminal).
        peak_flops: the device's peak FLOP/s for MFU (else DOMAINTUNE_HOME/peak_flops.json).
        loss_fn: the training loss, `(model, batch) -> (mean loss, supervised tokens)`
            (default `causal_lm_loss`; distillation passes its own). Validation always uses
            `causal_lm_loss`.
        select_by: the metric that picks the best step and drives early stopping: "loss", or a
            key of what `task_metric` returns (resolved already: `selection.resolve_select_by`).
        task_metric: `model -> {metric: value}` on decoded validation rows (`eval/validation.py`);
            needed when `select_by` is not "loss". Stages select by loss.
        choices: the closed answer set as a `models.choice.ChoiceTrie`, for the closed-set loss
            (`train/closed_set.py`; `train.closed_set_loss`), or None.

    Returns:
        A `TrainResult`.

    Under `accelerate launch` (WORLD_SIZE > 1) every process calls this with the same arguments;
    `train.grad_accum` is then per process and only process 0 writes (see `train/distributed.py`).

    Raises:
        UserError: nothing to train, old checkpoints without resume/force, a changed recipe on
            resume, too little disk, a missing replay/reference/terms file, a loss that became NaN,
            or `train.stages` under several processes.
        KeyboardInterrupt: after Ctrl-C, once a checkpoint is saved.

    Example:
        >>> result = run_training(model, tok, tpl, get_method("lora"), LoraOptions(), train, val,
        ...                       TrainConfig(max_steps=20), Path("runs/a"), "train: {}")  # doctest: +SKIP
    """
    dist = init_distributed()
    if cfg.stages and dist.active:
        raise UserError("train.stages cannot run under several processes yet",
                        hint="run each stage as its own recipe, or launch one process")
    if dist.active:
        cfg = _accelerate_fsdp(cfg, dist)
        refuse_unsupported(cfg.distributed.strategy, cfg.ewc is not None, select_by not in (LOSS, "accuracy"))
    seed_all(cfg.seed)
    torch.set_num_threads(cfg.threads or max(1, _usable_cores() // dist.local_world))
    configs = cfg.stage_configs()
    inputs = [build_inputs(*_stage_records(k, cfg, train_records, val_records), stage, tokenizer, template,
                           choices) for k, stage in enumerate(configs)]
    model = _prepare_model(model, method, method_opts, cfg, model_path, dist)
    if dist.active:
        broadcast_parameters({n: p for n, p in model.named_parameters() if p.requires_grad}, dist)
        if not dist.main:  # dropout and noise differ between processes; process 0 draws as one process would
            seed_all(rank_seed(cfg.seed, dist))
        shard_model(model, dist, **cfg.distributed.model_dump())  # before the optimizer is built
    shared = Shared(model, method, codec_pad_id(tokenizer), recipe_yaml, loss_fn or causal_lm_loss, model_path, callbacks, progress,
                    peak_flops, dist, select_by if not cfg.stages else LOSS, task_metric)
    if cfg.stages:
        return run_stages(shared, configs, inputs, Path(run_dir), resume, force)
    return train_run(shared, cfg, inputs[0], Path(run_dir), resume, force)


def _stage_records(index: int, cfg: TrainConfig, train_records: Sequence[dict],
                   val_records: Sequence[dict]) -> tuple[Sequence[dict], Sequence[dict]]:
    """A stage's (train, val) records: its own data_dir's, else the ones given."""
    if not cfg.stages or cfg.stages[index].data_dir is None:
        return train_records, val_records
    folder = Path(cfg.stages[index].data_dir)
    return load_split(folder / "train.jsonl"), load_split(folder / "val.jsonl")


def _accelerate_fsdp(cfg: TrainConfig, dist: Dist) -> TrainConfig:
    """Under an accelerate FSDP config (recipes/accelerate/fsdp.yaml) with the recipe's default strategy: fsdp2."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true" or cfg.distributed.strategy != "ddp":
        return cfg
    if dist.main:
        _console.print("accelerate's FSDP config: training with train.distributed.strategy fsdp2")
    return cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"strategy": "fsdp2"})})


def _init_folder(cfg: TrainConfig, method: Any, base: Any) -> Path | None:
    """The folder `train.init_from` names, checked to hold this method's weights for this base."""
    if not cfg.init_from:
        return None
    art = find_artifact(cfg.init_from)
    if art.method != method.name:
        raise UserError(f"train.init_from is a {art.method} run; this run trains {method.name}",
                        file=str(cfg.init_from), hint=f"train with --method {art.method}, or start from scratch")
    check_base(base, read_method_file(art.folder))
    return art.folder


def _usable_cores() -> int:
    # The cores this process may run on (taskset, cpusets), which os.cpu_count() overstates.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _prepare_model(model: Any, method: Any, opts: Any, cfg: TrainConfig, model_path: Path | None, dist: Dist) -> Any:
    start = _init_folder(cfg, method, model)
    model = method.apply(model, opts, tokenizer_path=model_path)
    if start is not None:
        n = load_into(model, start)
        if dist.main:
            _console.print(f"{method.name}: starting from the trained weights of {start} ({n} tensors)")
    model.to(dist.device)
    if cfg.gradient_checkpointing:
        # transformers 5.x renamed it; the old name still works there, with a FutureWarning.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    model.train()
    if dist.main:
        _console.print(f"{method.name}: {trainable_report(model)}")
    return model
