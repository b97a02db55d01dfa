"""One training run in one folder: optimizer, data position, validation, checkpoints, EWC, the artifact.

`train_run` is what `loop.run_training` calls once, or once per stage (`train/stages.py`):

    result = train_run(shared, cfg, build_inputs(...), Path("runs/run"), resume=False, force=False)

A checkpoint is written every `save_every` steps, at every new best validation loss (so the best
weights survive a crash) and at the end; the saved artifact holds the BEST step's weights. With
EWC, the penalty's gradient is added once per optimizer step, after all micro-batches (and after
the gradients are summed over processes, so it counts once), so a resume mid-accumulation adds it
at the same point of the same sum. Under `accelerate launch`, `shared.dist` says which process
this is; only process 0 writes files (`train/distributed.py` has the design).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file

from domaintune.config import TrainConfig
from domaintune.errors import UserError
from domaintune.files import atomic_folder, write_text_atomic
from domaintune.methods.base import decoder_layers
from domaintune.methods.groups import LayerGroup, clip_grad_norms, param_groups, parse_layer_spec
from domaintune.train import summary as facts
from domaintune.methods.artifact import METRICS_FILE, PLOT_FILE, RECIPE_FILE, SUMMARY_FILE
from domaintune.train.callbacks import GracefulStop, MetricsLog, ProgressBar, notify, plot_losses
from domaintune.train.checkpoint import (CHECKPOINTS_DIR, TrainState, checkpoint_name, checkpoint_problem,
                                         latest_checkpoint, load_checkpoint, save_checkpoint)
from domaintune.train.data import BatchStream, collate_rows, epoch_batches
from domaintune.train.distributed import (Dist, accumulate_across, barrier, broadcast_object, check_world, gather_rng,
                                          rank_seed, restore_rank_rng, validation_across)
from domaintune.train.fingerprint import FINGERPRINT_KEY, check_fingerprint, run_fingerprint
from domaintune.train.forgetting import EWC_FILE, Ewc, build_ewc
from domaintune.train.inputs import Inputs
from domaintune.models.loss import packing_supported, token_counts
from domaintune.train.plan import REPLAN_AFTER_STEPS, Plan, cache_build_cap, resolve_epochs, steps_within_budget
from domaintune.train.resume_checks import check_free_disk, check_resume_recipe
from domaintune.train.rng import capture_rng, restore_rng
from domaintune.train.selection import LOSS, Selector, TaskMetric
from domaintune.train.sharding import Gathered, full, full_weights, is_sharded, load_full, localize_optimizer_state
from domaintune.train.step import LossFn, accumulate_gradients, lr_factor, neftune

MIN_CACHE_PASSES = 1.5  # epochs below which the frozen-layer cache costs more than it saves

log = logging.getLogger(__name__)
AUTO_VALIDATIONS = 6  # validations per run with eval_every: auto
# Under a time budget (eval_every: auto), validations may take this share of the time left after
# the first steps; the last step is always validated. A 4-minute run on 2 cores validates once (its
# ~11 s loss pass would otherwise cost 6 of its ~35 steps); a 15-minute one about 6 times.
BUDGET_VALIDATION_SHARE = 0.1
_console = Console(stderr=True)
FULL_WEIGHT_METHODS = ("full", "freeze")  # saved as "model"; every other method as "adapter"


@dataclass
class TrainResult:
    """What `run_training` returns; `summary` is also written to run_dir/summary.json.

    With stages, the fields are the last stage's, except `run_dir`, `artifact` and `summary`,
    which are the whole run's; `stages` then holds one dict per stage (steps, losses, folder).
    """

    run_dir: Path
    steps: int
    best_step: int | None
    best_val_loss: float | None
    final_val_loss: float | None
    base_val_loss: float | None
    tokens: int
    seconds: float
    summary: dict
    stop_reason: str = "completed"
    artifact: Path | None = None
    stages: list[dict] = field(default_factory=list)


@dataclass
class Shared:
    """What every run (stage) of one `run_training` call shares."""

    model: Any
    method: Any
    pad_id: int
    recipe_yaml: str
    loss_fn: LossFn
    model_path: Path | None = None
    callbacks: Sequence[Any] = ()
    progress: bool = True
    peak_flops: float | None = None
    dist: Dist = field(default_factory=Dist)
    select_by: str = LOSS
    task_metric: TaskMetric | None = None


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_run(shared: Shared, cfg: TrainConfig, inputs: Inputs, run_dir: Path, resume: bool,
              force: bool) -> TrainResult:
    """Train `shared.model` on `inputs` in `run_dir` and save the best weights there.

    Args:
        shared: the model (method already applied), method, padding id, recipe and callbacks.
        cfg: the train section (one stage's).
        inputs: the encoded data (`inputs.build_inputs`).
        run_dir: the output folder.
        resume: continue from the newest complete checkpoint in `run_dir`.
        force: resume despite a changed recipe; without resume, delete old checkpoints.

    Returns:
        The `TrainResult`.
    """
    dist = shared.dist
    run = Run(shared.model, cfg, run_dir, shared.recipe_yaml, inputs, shared.pad_id, shared.loss_fn, dist,
              Selector(shared.select_by), shared.task_metric, progress=shared.progress)
    memory = run.preflight(shared.method.name)
    run.start(resume, force, model_path=shared.model_path)
    stop = GracefulStop()
    callbacks = [MetricsLog(run_dir), ProgressBar(shared.progress), stop, *shared.callbacks] if dist.main else [stop]
    try:
        notify(callbacks, "on_train_start", {"total_steps": run.total_steps, "step": run.state.step,
                                             "run_dir": run_dir})
        with neftune(shared.model, cfg.neftune_alpha):
            reason = run.fit(callbacks, stop)
        artifact = run.save_artifact(shared.method)
        summary = None
        if dist.main:
            summary = run.summary(shared.method.name, reason, memory, shared.model_path, shared.peak_flops)
            facts.write_summary(run_dir / SUMMARY_FILE, summary)
            plot_losses(run_dir / METRICS_FILE, run_dir / PLOT_FILE)
        summary = broadcast_object(summary, dist)  # every process returns the same result
        notify(callbacks, "on_train_end", summary)
    finally:
        notify(callbacks, "on_close")
    extra, evals = run.state.extra, run.state.extra["evals"]
    return TrainResult(run_dir, run.state.step, run.state.best_step, run.best_val_loss,
                       evals[-1][1] if evals else None, extra.get("base_val_loss"), extra["tokens"], extra["seconds"],
                       summary, reason, artifact)


def clear_old_checkpoints(run_dir: Path, force: bool, dist: Dist | None = None) -> None:
    """For a fresh start: refuse a folder holding checkpoints, or delete them when forced.

    With several processes every one looks first (so all refuse alike), then process 0 deletes.

    Raises:
        UserError: the folder holds checkpoints and `force` is False.
    """
    dist = dist or Dist()
    folder = Path(run_dir) / CHECKPOINTS_DIR
    occupied = folder.is_dir() and any(folder.iterdir())
    barrier(dist)
    if not occupied:
        return
    if not force:
        raise UserError("the run folder already holds checkpoints", file=str(run_dir),
                        hint="pass --resume to continue that run, --force to start over "
                             "(deletes them), or set train.output_dir to a new folder")
    if dist.main:
        shutil.rmtree(folder)


class Run:
    """One training run: its model, optimizer, data position and checkpoints."""

    def __init__(self, model: Any, cfg: TrainConfig, run_dir: Path, recipe_yaml: str, inputs: Inputs, pad_id: int,
                 loss_fn: LossFn, dist: Dist | None = None, selector: Selector | None = None,
                 task_metric: TaskMetric | None = None, progress: bool = False) -> None:
        model.train()  # a later stage gets the model back in eval mode from the previous stage's save
        self.model, self.cfg, self.run_dir, self.recipe_yaml = model, cfg, Path(run_dir), recipe_yaml
        self.dist = dist = dist or Dist()
        self.progress = progress and dist.main
        self.accum = cfg.grad_accum * dist.world  # micro-batches per step, over every process
        self.inputs, self.train_ex, self.pad_id, self.loss_fn = inputs, inputs.train, pad_id, loss_fn
        self.packing = cfg.packing and packing_supported(model)
        if cfg.packing and not self.packing:
            log.info("packing is off: prompt/prefix tuning cannot keep packed conversations apart")
        self.data = BatchStream(inputs.train, cfg.seed, self.packing, cfg.batch_tokens, cfg.batch_size, pad_id,
                                buckets=inputs.buckets)
        val = inputs.val
        self.val_batches = collate_rows(val, epoch_batches(val, 0, cfg.seed, self.packing, cfg.batch_tokens,
                                                           cfg.batch_size), self.packing, pad_id)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.learning_rate, cfg.weight_decay,
                                                        self._layer_groups()))
        order = {id(p): n for n, p in self.params.items()}
        self.names = [order[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        self.selector, self.task_metric = selector or Selector(), task_metric
        if self.selector.metric != LOSS and task_metric is None:
            raise ValueError(f"select_by {self.selector.metric} needs a task_metric")
        self.epochs = resolve_epochs(cfg.epochs, len(self.train_ex))
        self.total_steps = cfg.max_steps or max(1, math.ceil(self.data.batches_in(self.epochs) / self.accum))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._set_schedule(self.total_steps))
        self.state = TrainState(data_order_seed=cfg.seed, extra=self._fresh_extra())
        if dist.active:
            self.state.extra["world_size"] = dist.world
        self.ewc: Ewc | None = None
        self._stop_agreed = False  # a Ctrl-C on any process, agreed on at the end of the step
        self._clock = time.perf_counter()

    def _layer_groups(self) -> list[LayerGroup]:
        if not self.cfg.layer_groups:
            return []
        n_layers = len(decoder_layers(self.model))
        return [LayerGroup(g.name, parse_layer_spec(g.layers, n_layers), g.lr_scale, g.max_grad_norm)
                for g in self.cfg.layer_groups]

    def _set_schedule(self, total: int) -> Any:
        """The LR factor for `total` steps (warm-up, then decay); the scheduler reads it at every step."""
        self.total_steps = total
        warmup = math.ceil(self.cfg.warmup_ratio * total)
        self.schedule = partial(lr_factor, warmup=warmup, total=total, kind=self.cfg.scheduler)
        if hasattr(self, "scheduler"):
            self.scheduler.lr_lambdas = [self.schedule] * len(self.optimizer.param_groups)
        return self.schedule

    @property
    def best_val_loss(self) -> float | None:
        """The validation loss of the best step (the best metric itself when selecting by loss)."""
        if self.selector.metric == LOSS:
            return self.state.best_metric
        return self.state.extra.get("best_val_loss")

    def plan(self) -> Plan:
        """What this run does: rows, tokens, epochs, steps, budget."""
        epochs = self.data.epochs_in(self.total_steps * self.accum)
        tokens = round(sum(len(ex) for ex in self.train_ex) * epochs)
        return Plan(len(self.train_ex), tokens, round(epochs, 2), self.total_steps,
                    "max_steps" if self.cfg.max_steps else "auto" if self.cfg.epochs == "auto" else "epochs",
                    self.cfg.time_budget)

    @staticmethod
    def _fresh_extra() -> dict[str, Any]:
        return {"batch": 0, "evals": [], "bad_evals": 0, "tokens": 0, "supervised_tokens": 0, "seconds": 0.0,
                "train_seconds": 0.0, "stop_reason": None}

    # ---- setup -----------------------------------------------------------------------------------
    def preflight(self, method_name: str) -> facts.MemoryEstimate | None:
        """Print the memory estimate (warn when it exceeds what is free) and check the disk (process 0 only).

        Under a launcher, a failure here ends the job: torchrun stops the other processes.
        """
        if not self.dist.main:
            return None
        longest = max(len(ex) for ex in self.train_ex)
        row = max(self.cfg.batch_tokens, longest) if self.packing else self.cfg.batch_size * longest
        shape = self.cfg.distributed
        estimate = facts.report_memory(self.model, row, self.cfg.gradient_checkpointing, self.dist.world,
                                       shape.strategy, shape.reshard_after_forward)
        trainable = sum(p.numel() * p.element_size() for p in self.params.values())
        artifact = estimate.params if method_name == "full" else trainable
        ewc = 2 * trainable if self.inputs.reference is not None else 0  # fisher + anchor
        check_free_disk(self.run_dir, trainable * 3 * (self.cfg.keep_checkpoints + 1) + artifact + ewc)
        return estimate

    def start(self, resume: bool, force: bool, model_path: Path | None = None) -> None:
        """Restore the newest checkpoint (resume), or start fresh in a run folder without one; set up EWC.
        `model_path` (the base model's folder) goes into the fingerprint a resume must match."""
        from domaintune.models.load import domaintune_home

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = run_fingerprint(self.train_ex, self.inputs.records, self.total_steps, model_path,
                                      domaintune_home())
        # Process 0 alone checks the hashes, so every process resumes from the same one.
        latest = broadcast_object(latest_checkpoint(self.run_dir) if self.dist.main else None, self.dist)
        if resume and latest is None:
            log.warning("no complete checkpoint in %s; starting from scratch", self.run_dir)
        elif not resume:
            clear_old_checkpoints(self.run_dir, force, self.dist)
        restored = resume and latest is not None
        if restored:
            self._restore(latest, force)
            check_fingerprint(self.state.extra.get(FINGERPRINT_KEY), fingerprint, force)
        self.state.extra[FINGERPRINT_KEY] = fingerprint
        if self.dist.main:  # only once the resume checks passed: a refused resume keeps the run's own recipe
            write_text_atomic(self.run_dir / RECIPE_FILE, self.recipe_yaml)
        self._start_ewc(restored)
        self._start_frozen_cache()

    def _start_frozen_cache(self) -> None:
        """Compute the frozen layers' output once per example when only the top layers train."""
        from domaintune.models.loss import causal_lm_loss

        extra = self.state.extra
        # Under fsdp2 the frozen layers are sharded: each process would gather them on its own clock.
        sharded = is_sharded(self.model) and self.cfg.distributed.strategy == "fsdp2"
        if not self.cfg.cache_frozen or self.loss_fn is not causal_lm_loss or extra.get("frozen_cache") is False \
                or sharded:
            extra.setdefault("frozen_cache", False)
            return
        # Building costs one forward pass of the frozen layers over every example; it saves one per later
        # visit, so a run that sees its examples fewer than MIN_CACHE_PASSES times goes without. Under a
        # time budget the build counts against the budget and is given up once it projects beyond the
        # build that still leaves more steps (plan.cache_build_cap; the demo's retrieval prompts: 379 s
        # of a 300 s budget); built within it, each step runs the top layers only, so more passes fit.
        if "frozen_cache" not in extra and self.plan().epochs < MIN_CACHE_PASSES:
            extra["frozen_cache"] = False
            return
        budget = self.cfg.time_budget
        from domaintune.train.frozen import BuildTooSlow, FrozenPrefix, first_trained_layer
        from domaintune.train.summary import available_memory

        started = time.perf_counter()
        # A resumed run that used the cache builds it again whatever memory is free now: same path, same numbers.
        free = None if extra.get("frozen_cache") else available_memory(next(self.model.parameters()).device)[0]
        cut = first_trained_layer(self.model)
        cap = None
        if budget and not extra.get("frozen_cache") and cut:
            cap = cache_build_cap(budget, cut, len(decoder_layers(self.model)))
        try:
            prefix = FrozenPrefix.build(self.model, self.train_ex, self.cfg.batch_tokens,
                                        neftune=self.cfg.neftune_alpha is not None,
                                        prompt_learning=not packing_supported(self.model), free_bytes=free,
                                        progress=self.progress, max_seconds=cap)
        except BuildTooSlow as slow:
            prefix = None
            self._say(f"frozen-layer cache given up: building it would take about {slow.projected_s:.0f} s, more "
                      f"than {cap:.0f} s of the {budget / 60:.1f} min budget")
        extra["frozen_cache"] = prefix is not None
        if budget:  # the build (or the part given up) is time the budget pays for
            extra["seconds"] = extra.get("seconds", 0.0) + time.perf_counter() - started
        self.data.prefix = prefix
        if prefix is not None:
            self._say(f"frozen layers 0-{prefix.cut - 1}: computed once for {len(self.train_ex):,} examples "
                      f"({prefix.nbytes / 2**20:,.0f} MiB, {time.perf_counter() - started:.1f} s); each step runs "
                      f"the top {len(prefix.layers) - prefix.cut} layers")

    def _top_only(self) -> Any:
        prefix = self.data.prefix
        return prefix.top_only() if prefix is not None else contextlib.nullcontext()

    def _restore(self, path: Path, force: bool) -> None:
        check_resume_recipe((path / RECIPE_FILE).read_text(encoding="utf-8"), self.recipe_yaml, force)
        sharded = is_sharded(self.model)
        localize = partial(localize_optimizer_state, self.optimizer) if sharded else None
        weights, self.state, rng, _, grads = load_checkpoint(path, self.optimizer, self.scheduler, self.names, localize)
        load_full(self.params, weights)  # sharded: every process keeps its shard
        for name, param in self.params.items():  # mid-step checkpoints are one process's only
            param.grad = grads[name].to(param.device) if grads is not None and name in grads else None
        if "budget_total_steps" in self.state.extra:  # the schedule a time budget fitted, as it was
            self._set_schedule(self.state.extra["budget_total_steps"])
        if self.state.extra.get("stop_reason") == "completed" and self.state.step < self.total_steps:
            self.state.extra["stop_reason"] = None  # a forced resume with more steps continues
        extra = self.state.extra
        check_world(extra.pop("world_size", 1), self.state.micro_step, self.dist, force)
        if self.dist.active:
            extra["world_size"] = self.dist.world
        restore_rng(rng)  # nothing after this may draw random numbers before training
        if not restore_rank_rng(extra.pop("rank_rng", None), self.dist):
            seed_all(rank_seed(self.cfg.seed, self.dist))  # another process count: a fresh stream
        if self.dist.main:
            _console.print(f"resumed from {path.name} (step {self.state.step}, micro-batch {self.state.micro_step})")

    def _start_ewc(self, restored: bool) -> None:
        """Load the run's Fisher and anchor (resume), or compute them from the weights as they are now."""
        if self.inputs.reference is None:
            return
        ewc_cfg, path, extra = self.cfg.ewc, self.run_dir / EWC_FILE, self.state.extra
        if restored and "ewc_sha256" in extra:
            self.ewc = Ewc.load(path, ewc_cfg.weight, extra["ewc_sha256"]).to(next(iter(self.params.values())).device)
            return
        # Eval mode, no dropout: this draws no random numbers, so the data order and noise are unchanged.
        self.ewc = build_ewc(self.model, self.params, self.inputs.reference, ewc_cfg.samples, self.cfg.seed,
                             self.pad_id, ewc_cfg.weight)
        if self.dist.main:  # every process computed the same Fisher; the others resume from this file
            extra["ewc_sha256"] = self.ewc.save(path)
            _console.print(f"ewc: Fisher from {min(ewc_cfg.samples, len(self.inputs.reference))} reference examples")

    # ---- training --------------------------------------------------------------------------------
    def fit(self, callbacks: Sequence[Any], stop: GracefulStop) -> str:
        """Train until the last step, early stopping, the time budget or Ctrl-C; returns why it stopped."""
        self._clock = time.perf_counter()
        extra = self.state.extra
        if self.state.step == 0 and "base_val_loss" not in extra:
            extra["base_val_loss"] = self._validate(callbacks)[0]
            self._say(self.plan().describe(self._rough_seconds_per_step()))
        reason = extra["stop_reason"]
        while reason is None:
            notify(callbacks, "on_step", self._train_step(stop))
            if self.state.step == REPLAN_AFTER_STEPS:
                self._fit_to_budget()
            budget = self.cfg.time_budget
            # Process 0's clock decides, so every process stops at the same step.
            out_of_time = broadcast_object(budget is not None and self._elapsed() >= budget, self.dist)
            improved, patience_out = self._validate_if_due(callbacks, last=out_of_time)
            done = self.state.step >= self.total_steps
            reason = ("early_stopping" if patience_out else "completed" if done
                      else "time_budget" if out_of_time else None)
            extra["stop_reason"] = reason
            requested = self._stop_agreed if self.dist.active else stop.requested
            if reason or improved or self.state.step % self.cfg.save_every == 0 or requested:
                path = self._save()
                if requested and not reason:
                    raise KeyboardInterrupt(f"training interrupted; checkpoint {path}, continue with --resume")
        return reason

    def _say(self, text: str) -> None:
        if self.dist.main:
            _console.print(text)

    def _rough_seconds_per_step(self) -> float | None:
        """From the validation forward pass: a training step costs about 3 forward passes of its
        tokens, through the layers it runs (all, or those above the frozen-layer cache)."""
        extra = self.state.extra
        seconds, tokens = extra.get("loss_validation_seconds"), sum(token_counts(b)[0] for b in self.val_batches)
        if not seconds or not tokens:
            return None
        step_tokens = sum(len(ex) for ex in self.train_ex) / max(1.0, self.data.batches_in(1.0)) * self.accum
        prefix = self.data.prefix
        share = 1.0 if prefix is None else 1.0 - prefix.cut / len(prefix.layers)
        return 3 * share * seconds / tokens * step_tokens

    def _fit_to_budget(self) -> None:
        """After the first steps: say the measured pace, and shorten the schedule to the time budget."""
        extra, step = self.state.extra, self.state.step
        per_step = extra["train_seconds"] / step
        budget, total = self.cfg.time_budget, self.total_steps
        if budget is not None and "budget_total_steps" not in extra:
            val_s = extra.get("validation_seconds", 0.0) if self.val_batches else 0.0
            auto = not isinstance(self.cfg.eval_every, int)
            if auto:  # fewer validations, not fewer steps: at most BUDGET_VALIDATION_SHARE of what is left
                left = max(0.0, budget - self._elapsed())
                extra["budget_validations"] = max(1, min(AUTO_VALIDATIONS, int(BUDGET_VALIDATION_SHARE * left / val_s))) \
                    if val_s > 0 else AUTO_VALIDATIONS
            fitted = total
            for _ in range(3):  # with eval_every: auto the validations follow the fitted length
                every = self.cfg.eval_every if not auto else max(1, math.ceil(fitted / extra["budget_validations"]))
                fitted = min(fitted, steps_within_budget(budget, self._elapsed(), step, per_step, val_s, every, total))
            fitted = broadcast_object(fitted, self.dist)  # process 0's measurements decide for all
            extra["budget_total_steps"] = fitted
            if fitted < total:
                self._set_schedule(fitted)
                self._say(f"time budget {budget / 60:.1f} min: {fitted} of {total} steps fit; the schedule "
                          f"is fitted to {fitted}")
        self._say(f"measured {per_step:.2f} s/step: about {(self.total_steps - step) * per_step / 60:.1f} min "
                  f"for the {self.total_steps - step} steps left")

    def _train_step(self, stop: GracefulStop) -> dict[str, Any]:
        start, state, extra = time.perf_counter(), self.state, self.state.extra
        dist = self.dist
        batches, after, n_examples = self.data.take(state.epoch, extra["batch"], self.accum, (dist.rank, dist.world))
        earlier = extra.pop("loss_sum", 0.0)  # loss of micro-batches run before a mid-step resume

        def after_micro(done: int, loss_sum: float) -> None:
            if stop.requested and done < len(batches):
                state.micro_step, extra["loss_sum"] = done, earlier + loss_sum
                path = self._save()
                raise KeyboardInterrupt(f"training interrupted; checkpoint {path}, continue with --resume")

        with self._top_only():
            if dist.active:  # no checkpoint mid-step: until the step's end, gradients are this process's part only
                loss_sum, supervised, tokens, self._stop_agreed = accumulate_across(
                    self.model, batches, self.loss_fn, lambda: stop.requested, dist)
            else:
                loss_sum, supervised, tokens = accumulate_gradients(self.model, batches, state.micro_step,
                                                                    after_micro, self.loss_fn)
        loss = (earlier + loss_sum) / supervised
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {state.step + 1}",
                            hint="lower train.learning_rate or set train.max_grad_norm")
        penalty = self._ewc_backward()  # before clipping: the penalty is part of the step's loss
        record = {"type": "train", "step": state.step + 1, "loss": loss, **penalty, "lr": self._lr(), **self._clip()}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        state.step, state.micro_step, (state.epoch, extra["batch"]) = state.step + 1, 0, after
        state.samples_seen += n_examples
        extra["tokens"] += tokens
        extra["supervised_tokens"] += supervised
        extra["train_seconds"] += seconds
        return {**record, "total_steps": self.total_steps, "epoch": round(self.data.epochs(after), 4), "tokens": tokens,
                "supervised_tokens": supervised, "tokens_per_s": tokens / seconds, "elapsed_s": self._elapsed()}

    def _ewc_backward(self) -> dict[str, float]:
        """Add the EWC penalty's gradient (once per step); its value for metrics.jsonl."""
        if self.ewc is None:
            return {}
        penalty = self.ewc.penalty(self.params)
        penalty.backward()
        return {"ewc_penalty": penalty.item()}

    def _lr(self) -> float:
        return self.cfg.learning_rate * self.schedule(self.scheduler.last_epoch)

    def _clip(self) -> dict[str, Any]:
        """Per-group clipping (groups with their own norm), then the global norm; returns the norms."""
        out: dict[str, Any] = {}
        if self.cfg.layer_groups:
            out["group_grad_norms"] = clip_grad_norms(self.optimizer.param_groups, None)
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.max_grad_norm or math.inf)
        return {"grad_norm": float(full(norm)), **out}

    @property
    def eval_every(self) -> int:
        """Steps between validations: `train.eval_every`, or for "auto" about `AUTO_VALIDATIONS` per run."""
        every = self.cfg.eval_every
        if isinstance(every, int):
            return every
        count = self.state.extra.get("budget_validations", AUTO_VALIDATIONS)  # fewer under a tight time budget
        return max(1, math.ceil(self.total_steps / count))

    def _validate_if_due(self, callbacks: Sequence[Any], last: bool = False) -> tuple[bool, bool]:
        """Validate every `eval_every` steps and at the last (or when `last` says the run ends here);
        returns (new best, patience ran out)."""
        step, last = self.state.step, last or self.state.step >= self.total_steps
        if not self.val_batches or not (step % self.eval_every == 0 or last):
            return False, False
        _, improved = self._validate(callbacks)
        extra = self.state.extra
        extra["bad_evals"] = 0 if improved else extra["bad_evals"] + 1
        patience = self.cfg.early_stopping_patience
        return improved, patience is not None and extra["bad_evals"] >= patience

    def _validate(self, callbacks: Sequence[Any]) -> tuple[float | None, bool]:
        """The validation loss (and the task metric when selecting by one); whether it is a new best."""
        started = time.perf_counter()
        loss, accuracy = validation_across(self.model, self.val_batches, self.dist)
        extra = self.state.extra
        extra["loss_validation_seconds"] = time.perf_counter() - started
        if loss is None:
            return None, False
        record: dict[str, Any] = {"type": "val", "step": self.state.step, "val_loss": loss}
        value = loss
        if self.selector.metric == "accuracy" and accuracy is not None:
            # Greedy closed-set decoding's accuracy, read off the loss pass's logits (models.loss.
            # closed_set_hits): the figure eval reports, over every validation row, without decoding.
            record["val_accuracy"] = value = accuracy
        elif self.task_metric is not None and self.selector.metric != LOSS:
            self.model.eval()  # no dropout while decoding; the metric draws no random numbers
            # Process 0 decodes; every process selects and stops by its scores.
            scores = broadcast_object(self.task_metric(self.model) if self.dist.main else None, self.dist)
            self.model.train()
            record.update({f"val_{name}": score for name, score in scores.items()})
            value = scores[self.selector.metric]
        extra["validation_seconds"] = time.perf_counter() - started
        step, state = self.state.step, self.state
        improved = step > 0 and self.selector.better(value, state.best_metric)
        if improved:
            state.best_metric, state.best_step = value, step
            extra["best_val_loss"] = loss
        if step > 0:
            extra["evals"].append([step, loss])
        else:
            extra["base_metric"] = value
        notify(callbacks, "on_eval", {**record, "best": improved})
        return loss, improved

    def _elapsed(self) -> float:
        now = time.perf_counter()
        self.state.extra["seconds"] += now - self._clock
        self._clock = now
        return self.state.extra["seconds"]

    def _save(self) -> Path:
        self._elapsed()
        ranks_rng = gather_rng(self.dist)
        # Sharded: every process takes part in gathering the full tensors; process 0 writes them.
        gathered = Gathered(self.params, self.optimizer) if is_sharded(self.model) else None
        if not self.dist.main:
            return self.run_dir / CHECKPOINTS_DIR / checkpoint_name(self.state.step)
        if ranks_rng is not None:  # the other processes' streams, so a resume continues each of them
            self.state.extra["rank_rng"] = ranks_rng[1:]
        grads = None
        if self.state.micro_step:
            grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
        params, optimizer = self.params, self.optimizer
        if gathered is not None:
            params, optimizer = gathered.trainable, gathered
        try:
            return save_checkpoint(self.run_dir, self.state.step, params, optimizer, self.scheduler,
                                   self.state, self.recipe_yaml, ranks_rng[0] if ranks_rng else capture_rng(),
                                   keep_last=self.cfg.keep_checkpoints,
                                   accum_grads=grads)
        finally:
            self.state.extra.pop("rank_rng", None)

    # ---- the end ---------------------------------------------------------------------------------
    def save_artifact(self, method: Any) -> Path:
        """Put the best step's weights into the model and save them with the method."""
        barrier(self.dist)  # process 0's checkpoints are on disk: every process loads the best one
        best = self.state.best_step
        if best is not None and best != self.state.step:
            self._load_best(best)
        self.model.eval()
        out = self.run_dir / ("model" if method.name in FULL_WEIGHT_METHODS else "adapter")
        with full_weights(self.model, self.dist.main):  # sharded: the whole weights, on process 0
            if self.dist.main:
                # Saved into a sibling folder renamed into place: a crash mid-save leaves the previous
                # artifact whole (and `--resume` on a finished run writes it again from the checkpoint).
                with atomic_folder(out) as tmp:
                    method.save(self.model, tmp)
        return out

    def _load_best(self, step: int) -> None:
        path = self.run_dir / CHECKPOINTS_DIR / checkpoint_name(step)
        problem = checkpoint_problem(path)
        if problem is not None:
            log.warning("best checkpoint %s is unusable (%s); saving the last step's weights instead", path, problem)
            return
        load_full(self.params, load_file(str(path / "model.safetensors")))

    def summary(self, method_name: str, reason: str, memory: facts.MemoryEstimate, model_path: Path | None,
                peak_flops: float | None) -> dict[str, Any]:
        """The contents of summary.json (plus replay, curriculum, terms and EWC facts when used)."""
        from domaintune.models.load import domaintune_home

        base = facts.build_summary(
            self.model, self.state, method=method_name, reason=reason, total_steps=self.total_steps,
            epochs=round(self.data.epochs((self.state.epoch, self.state.extra["batch"])), 4), packing=self.packing,
            memory=memory, records=self.inputs.records, dropped=self.inputs.dropped, n_examples=len(self.train_ex),
            val_batches=self.val_batches, recipe_yaml=self.recipe_yaml, model_path=model_path,
            peak_flops=peak_flops, home=domaintune_home(), select_by=self.selector.metric)
        if self.dist.active:  # tokens/s is the whole job's; MFU is per device
            base["processes"], base["distributed"] = self.dist.world, self.cfg.distributed.strategy
            base["mfu"] = base["mfu"] / self.dist.world if base["mfu"] else None
        return {**base, **self.inputs.facts}
