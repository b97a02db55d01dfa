"""The training loop behind `domaintune train`: plain PyTorch over padding-free batches.

    result = run_training(model, tok, template, get_method("lora"), LoraOptions(), train, val, cfg,
                          Path("runs/run"), recipe_yaml)
    result.best_val_loss < result.base_val_loss

No HF Trainer: its checkpoints pickle the optimizer and RNG states, ours are safetensors + JSON
(`train/checkpoint.py`). Design choices:

* One optimizer step is `grad_accum` micro-batches. Each micro-batch's mean loss is scaled by its
  share of the step's supervised tokens, so the gradient is that of the summed token losses over
  the step's total: accumulation equals one big batch, whatever the row lengths (torchtune #2307).
* The data order is a function of (seed, epoch) (`train/data.py`); the position (epoch, batch,
  micro step) plus optimizer, scheduler, RNG and accumulated gradients make a CPU resume
  bit-identical. A checkpoint is written every `save_every` steps, at every new best validation
  loss (so the best weights survive a crash) and at the end.
* The saved artifact holds the BEST step's weights, reloaded from that step's checkpoint.
* Ctrl-C finishes the current micro-batch, checkpoints (mid-accumulation if need be) and stops
  (`callbacks.GracefulStop`); `--resume` continues from there. A second Ctrl-C stops at once.
* fp32 on CPU; fp32 master weights with bf16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file

from domaintune.config import TrainConfig
from domaintune.errors import UserError
from domaintune.methods.base import decoder_layers, trainable_report
from domaintune.methods.groups import LayerGroup, clip_grad_norms, param_groups, parse_layer_spec
from domaintune.train import summary as facts
from domaintune.train.callbacks import (METRICS_FILE, PLOT_FILE, GracefulStop, MetricsLog, ProgressBar, notify,
                                        plot_losses)
from domaintune.train.checkpoint import (CHECKPOINTS_DIR, TrainState, check_free_disk, check_resume_recipe,
                                         checkpoint_name, checkpoint_problem, latest_checkpoint, load_checkpoint,
                                         save_checkpoint)
from domaintune.train.collate import Example
from domaintune.train.data import BatchStream, collate_rows, encode_split, epoch_batches, require_trainable
from domaintune.train.loss import causal_lm_loss, packing_supported, token_counts
from domaintune.train.rng import capture_rng, restore_rng

log = logging.getLogger(__name__)
_console = Console(stderr=True)
RECIPE_FILE = "recipe.resolved.yaml"
SUMMARY_FILE = "summary.json"
FULL_WEIGHT_METHODS = ("full", "freeze")  # saved as "model"; every other method as "adapter"


@dataclass
class TrainResult:
    """What `run_training` returns; `summary` is also written to run_dir/summary.json."""

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


def run_training(model: Any, tokenizer: Any, template: Any, method: Any, method_opts: Any,
                 train_records: Sequence[dict], val_records: Sequence[dict], cfg: TrainConfig, run_dir: Path,
                 recipe_yaml: str, resume: bool = False, force: bool = False, model_path: Path | None = None,
                 callbacks: Sequence[Any] = (), *, progress: bool = True,
                 peak_flops: float | None = None) -> TrainResult:
    """Fine-tune `model` with `method` on prepared records and save the best weights.

    Args:
        model: the base causal LM (fp32), as `models.load.load_model` returns it.
        tokenizer, template: the model's tokenizer and chat template.
        method, method_opts: a registered method (`methods.get_method`) and its options.
        train_records, val_records: prepared records (`train.data.load_split`; its path and sha256
            go into the lineage). An empty validation set turns off validation and early stopping.
        cfg: the recipe's train section.
        run_dir: output folder: adapter/ or model/, checkpoints/, metrics.jsonl, summary.json, loss.png.
        recipe_yaml: the resolved recipe, written to run_dir/recipe.resolved.yaml and into checkpoints.
        resume: continue from the newest complete checkpoint in run_dir.
        force: resume despite a changed recipe; without resume, delete old checkpoints and start over.
        model_path: the base model folder (lineage hashes; tokenizer folder for prompt init_text).
        callbacks: extra callbacks (see `train.callbacks`).
        progress: show a progress bar (only on a terminal).
        peak_flops: the device's peak FLOP/s for MFU (else DOMAINTUNE_HOME/peak_flops.json).

    Returns:
        A `TrainResult`.

    Raises:
        UserError: nothing to train, old checkpoints without resume/force, a changed recipe on
            resume, too little disk, or a loss that became NaN.
        KeyboardInterrupt: after Ctrl-C, once a checkpoint is saved.

    Example:
        >>> result = run_training(model, tok, tpl, get_method("lora"), LoraOptions(), train, val,
        ...                       TrainConfig(max_steps=20), Path("runs/a"), "train: {}")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    _seed_all(cfg.seed)
    torch.set_num_threads(cfg.threads or _usable_cores())
    encode = partial(encode_split, tokenizer=tokenizer, template=template, max_len=cfg.max_len,
                     truncation=cfg.truncation, train_on_prompt=cfg.train_on_prompt, keep_reasoning=cfg.keep_reasoning)
    train_ex, dropped = encode(train_records)
    require_trainable(train_ex, dropped, getattr(train_records, "path", None), max_len=cfg.max_len,
                      truncation=cfg.truncation, train_on_prompt=cfg.train_on_prompt)
    val_ex, val_dropped = encode(val_records)
    model = _prepare_model(model, method, method_opts, cfg, model_path)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    run = _Run(model, cfg, run_dir, recipe_yaml, train_ex, val_ex, pad_id)
    memory = run.preflight(method.name)
    run.start(resume, force)
    stop = GracefulStop()
    callbacks = [MetricsLog(run_dir), ProgressBar(progress), stop, *callbacks]
    try:
        notify(callbacks, "on_train_start", {"total_steps": run.total_steps, "step": run.state.step,
                                             "run_dir": run_dir})
        with _neftune(model, cfg.neftune_alpha):
            reason = run.fit(callbacks, stop)
        artifact = run.save_artifact(method)
        summary = run.summary(method.name, reason, memory, (train_records, val_records), (dropped, val_dropped),
                              model_path, peak_flops)
        facts.write_summary(run_dir / SUMMARY_FILE, summary)
        plot_losses(run_dir / METRICS_FILE, run_dir / PLOT_FILE)
        notify(callbacks, "on_train_end", summary)
    finally:
        notify(callbacks, "on_close")
    evals = run.state.extra["evals"]
    return TrainResult(run_dir, run.state.step, run.state.best_step, run.state.best_metric,
                       evals[-1][1] if evals else None, run.state.extra.get("base_val_loss"),
                       run.state.extra["tokens"], run.state.extra["seconds"], summary, reason, artifact)


def _usable_cores() -> int:
    # The cores this process may run on (taskset, cpusets), which os.cpu_count() overstates.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _prepare_model(model: Any, method: Any, opts: Any, cfg: TrainConfig, model_path: Path | None) -> Any:
    model = method.apply(model, opts, tokenizer_path=model_path)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.gradient_checkpointing:
        # transformers 5.x renamed it; the old name still works there, with a FutureWarning.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    model.train()
    _console.print(f"{method.name}: {trainable_report(model)}")
    return model


@contextlib.contextmanager
def _neftune(model: Any, alpha: float | None):
    """NEFTune noise on the input embeddings in train mode only (transformers' own hook)."""
    if not alpha:
        yield
        return
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    # Uniform(-1, 1) * alpha / sqrt(L * d) with L the row length, so for a packed row L is the
    # row's, as with TRL's padding-free batches.
    handle = activate_neftune(model, alpha)
    try:
        yield
    finally:
        deactivate_neftune(model, handle)


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """LR multiplier at 0-based `step`: linear warm-up, then cosine, linear or constant decay.

    Warm-up rises as (step+1)/(warmup+1), so no step runs at LR 0; decay ends just above 0 at the
    last step.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress if kind == "linear" else 1.0


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulate_gradients(model: Any, batches: Sequence[dict[str, torch.Tensor]], start: int = 0,
                         after_micro: Callable[[int, float], None] | None = None) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches, adding into `.grad`.

    Each micro-batch's mean loss is weighted by `n_i / N` (N: supervised tokens of the whole
    step), so the accumulated gradient is `grad(sum of token losses) / N`, exactly one big batch.

    Args:
        model: the model, in train mode.
        batches: every micro-batch of the step (counts are taken over all of them).
        start: micro-batches already accumulated (a resume mid-step); they are not run again.
        after_micro: called with (micro-batches done, loss sum so far) after each backward.

    Returns:
        `(loss_sum, supervised, tokens)`: summed token losses of the micro-batches run, and the
        supervised and total token counts of the whole step.
    """
    counts = [token_counts(b) for b in batches]
    supervised = sum(n for _, n in counts)
    device = next(model.parameters()).device
    loss_sum = 0.0
    for i in range(start, len(batches)):
        with _autocast(device):
            loss, n = causal_lm_loss(model, _to(batches[i], device))
        (loss * (n / supervised)).backward()
        loss_sum += loss.item() * n
        if after_micro is not None:
            after_micro(i + 1, loss_sum)
    return loss_sum, supervised, sum(t for t, _ in counts)


@torch.no_grad()
def validation_loss(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """Token-weighted mean loss over `batches` in eval mode (None without supervised tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        with _autocast(device):
            loss, n = causal_lm_loss(model, _to(batch, device))
        total += loss.item() * n
        count += n
    model.train(was_training)
    return total / count if count else None


class _Run:
    """One training run: its model, optimizer, data position and checkpoints."""

    def __init__(self, model: Any, cfg: TrainConfig, run_dir: Path, recipe_yaml: str, train_ex: list[Example],
                 val_ex: list[Example], pad_id: int) -> None:
        self.model, self.cfg, self.run_dir, self.recipe_yaml = model, cfg, run_dir, recipe_yaml
        self.train_ex = train_ex
        self.packing = cfg.packing and packing_supported(model)
        if cfg.packing and not self.packing:
            log.info("packing is off: prompt/prefix tuning cannot keep packed conversations apart")
        self.data = BatchStream(train_ex, cfg.seed, self.packing, cfg.batch_tokens, cfg.batch_size, pad_id)
        self.val_batches = collate_rows(val_ex, epoch_batches(val_ex, 0, cfg.seed, self.packing, cfg.batch_tokens,
                                                              cfg.batch_size), self.packing, pad_id)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.learning_rate, cfg.weight_decay,
                                                        self._layer_groups()))
        order = {id(p): n for n, p in self.params.items()}
        self.names = [order[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.data.per_epoch / cfg.grad_accum))
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.schedule = partial(lr_factor, warmup=warmup, total=self.total_steps, kind=cfg.scheduler)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.state = TrainState(data_order_seed=cfg.seed, extra=self._fresh_extra())
        self._clock = time.perf_counter()

    def _layer_groups(self) -> list[LayerGroup]:
        if not self.cfg.layer_groups:
            return []
        n_layers = len(decoder_layers(self.model))
        return [LayerGroup(g.name, parse_layer_spec(g.layers, n_layers), g.lr_scale, g.max_grad_norm)
                for g in self.cfg.layer_groups]

    @staticmethod
    def _fresh_extra() -> dict[str, Any]:
        return {"batch": 0, "evals": [], "bad_evals": 0, "tokens": 0, "supervised_tokens": 0, "seconds": 0.0,
                "train_seconds": 0.0, "stop_reason": None}

    # ---- setup -----------------------------------------------------------------------------------
    def preflight(self, method_name: str) -> facts.MemoryEstimate:
        """Print the memory estimate (warn when it exceeds what is free) and check the disk."""
        longest = max(len(ex) for ex in self.train_ex)
        row = max(self.cfg.batch_tokens, longest) if self.packing else self.cfg.batch_size * longest
        estimate = facts.report_memory(self.model, row, self.cfg.gradient_checkpointing)
        trainable = sum(p.numel() * p.element_size() for p in self.params.values())
        artifact = estimate.params if method_name == "full" else trainable
        check_free_disk(self.run_dir, trainable * 3 * (self.cfg.keep_checkpoints + 1) + artifact)
        return estimate

    def start(self, resume: bool, force: bool) -> None:
        """Restore the newest checkpoint (resume), or start fresh in a run folder without one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        latest = latest_checkpoint(self.run_dir)
        if resume and latest is None:
            log.warning("no complete checkpoint in %s; starting from scratch", self.run_dir)
        elif not resume and (self.run_dir / CHECKPOINTS_DIR).is_dir() and any((self.run_dir / CHECKPOINTS_DIR).iterdir()):
            if not force:
                raise UserError("the run folder already holds checkpoints", file=str(self.run_dir),
                                hint="pass --resume to continue that run, --force to start over "
                                     "(deletes them), or set train.output_dir to a new folder")
            shutil.rmtree(self.run_dir / CHECKPOINTS_DIR)
        (self.run_dir / RECIPE_FILE).write_text(self.recipe_yaml, encoding="utf-8")
        if resume and latest is not None:
            self._restore(latest, force)

    def _restore(self, path: Path, force: bool) -> None:
        check_resume_recipe((path / RECIPE_FILE).read_text(encoding="utf-8"), self.recipe_yaml, force)
        weights, self.state, rng, _, grads = load_checkpoint(path, self.optimizer, self.scheduler, self.names)
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(weights[name])
                param.grad = grads[name].to(param.device) if grads is not None and name in grads else None
        if self.state.extra.get("stop_reason") == "completed" and self.state.step < self.total_steps:
            self.state.extra["stop_reason"] = None  # a forced resume with more steps continues
        restore_rng(rng)  # last: nothing may draw random numbers between here and training
        _console.print(f"resumed from {path.name} (step {self.state.step}, micro-batch {self.state.micro_step})")

    # ---- training --------------------------------------------------------------------------------
    def fit(self, callbacks: Sequence[Any], stop: GracefulStop) -> str:
        """Train until the last step, early stopping or Ctrl-C; returns why it stopped."""
        self._clock = time.perf_counter()
        if self.state.step == 0 and "base_val_loss" not in self.state.extra:
            self.state.extra["base_val_loss"] = self._validate(callbacks)[0]
        reason = self.state.extra["stop_reason"]
        while reason is None:
            notify(callbacks, "on_step", self._train_step(stop))
            improved, patience_out = self._validate_if_due(callbacks)
            done = self.state.step >= self.total_steps
            reason = "early_stopping" if patience_out else ("completed" if done else None)
            self.state.extra["stop_reason"] = reason
            if reason or improved or self.state.step % self.cfg.save_every == 0 or stop.requested:
                path = self._save()
                if stop.requested and not reason:
                    raise KeyboardInterrupt(f"training interrupted; checkpoint {path}, continue with --resume")
        return reason

    def _train_step(self, stop: GracefulStop) -> dict[str, Any]:
        start, state, extra = time.perf_counter(), self.state, self.state.extra
        batches, after, n_examples = self.data.take(state.epoch, extra["batch"], self.cfg.grad_accum)
        earlier = extra.pop("loss_sum", 0.0)  # loss of micro-batches run before a mid-step resume

        def after_micro(done: int, loss_sum: float) -> None:
            if stop.requested and done < len(batches):
                state.micro_step, extra["loss_sum"] = done, earlier + loss_sum
                path = self._save()
                raise KeyboardInterrupt(f"training interrupted; checkpoint {path}, continue with --resume")

        loss_sum, supervised, tokens = accumulate_gradients(self.model, batches, state.micro_step, after_micro)
        loss = (earlier + loss_sum) / supervised
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {state.step + 1}",
                            hint="lower train.learning_rate or set train.max_grad_norm")
        record = {"type": "train", "step": state.step + 1, "loss": loss, "lr": self._lr(), **self._clip()}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        state.step, state.micro_step, (state.epoch, extra["batch"]) = state.step + 1, 0, after
        state.samples_seen += n_examples
        extra["tokens"] += tokens
        extra["supervised_tokens"] += supervised
        extra["train_seconds"] += seconds
        return {**record, "epoch": round(self.data.epochs(after), 4), "tokens": tokens,
                "supervised_tokens": supervised, "tokens_per_s": tokens / seconds, "elapsed_s": self._elapsed()}

    def _lr(self) -> float:
        return self.cfg.learning_rate * self.schedule(self.scheduler.last_epoch)

    def _clip(self) -> dict[str, Any]:
        """Per-group clipping (groups with their own norm), then the global norm; returns the norms."""
        out: dict[str, Any] = {}
        if self.cfg.layer_groups:
            out["group_grad_norms"] = clip_grad_norms(self.optimizer.param_groups, None)
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.max_grad_norm or math.inf)
        return {"grad_norm": float(norm), **out}

    def _validate_if_due(self, callbacks: Sequence[Any]) -> tuple[bool, bool]:
        """Validate every `eval_every` steps and at the last; returns (new best, patience ran out)."""
        step, last = self.state.step, self.state.step >= self.total_steps
        if not self.val_batches or not (step % self.cfg.eval_every == 0 or last):
            return False, False
        _, improved = self._validate(callbacks)
        extra = self.state.extra
        extra["bad_evals"] = 0 if improved else extra["bad_evals"] + 1
        patience = self.cfg.early_stopping_patience
        return improved, patience is not None and extra["bad_evals"] >= patience

    def _validate(self, callbacks: Sequence[Any]) -> tuple[float | None, bool]:
        loss = validation_loss(self.model, self.val_batches)
        if loss is None:
            return None, False
        step, state = self.state.step, self.state
        improved = step > 0 and (state.best_metric is None or loss < state.best_metric)
        if improved:
            state.best_metric, state.best_step = loss, step
        if step > 0:
            state.extra["evals"].append([step, loss])
        notify(callbacks, "on_eval", {"type": "val", "step": step, "val_loss": loss, "best": improved})
        return loss, improved

    def _elapsed(self) -> float:
        now = time.perf_counter()
        self.state.extra["seconds"] += now - self._clock
        self._clock = now
        return self.state.extra["seconds"]

    def _save(self) -> Path:
        self._elapsed()
        grads = None
        if self.state.micro_step:
            grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
        return save_checkpoint(self.run_dir, self.state.step, self.params, self.optimizer, self.scheduler, self.state,
                               self.recipe_yaml, capture_rng(), keep_last=self.cfg.keep_checkpoints,
                               accum_grads=grads)

    # ---- the end ---------------------------------------------------------------------------------
    def save_artifact(self, method: Any) -> Path:
        """Put the best step's weights into the model and save them with the method."""
        best = self.state.best_step
        if best is not None and best != self.state.step:
            self._load_best(best)
        self.model.eval()
        out = self.run_dir / ("model" if method.name in FULL_WEIGHT_METHODS else "adapter")
        # No stale files from an earlier save; a crash mid-save loses nothing, since the final
        # checkpoint is already written and `--resume` on a finished run writes the artifact again.
        shutil.rmtree(out, ignore_errors=True)
        method.save(self.model, out)
        return out

    def _load_best(self, step: int) -> None:
        path = self.run_dir / CHECKPOINTS_DIR / checkpoint_name(step)
        problem = checkpoint_problem(path)
        if problem is not None:
            log.warning("best checkpoint %s is unusable (%s); saving the last step's weights instead", path, problem)
            return
        weights = load_file(str(path / "model.safetensors"))
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(weights[name])

    def summary(self, method_name: str, reason: str, memory: facts.MemoryEstimate, records: tuple, dropped: tuple,
                model_path: Path | None, peak_flops: float | None) -> dict[str, Any]:
        """The contents of summary.json."""
        from domaintune.models.load import domaintune_home

        return facts.build_summary(
            self.model, self.state, method=method_name, reason=reason, total_steps=self.total_steps,
            epochs=round(self.data.epochs((self.state.epoch, self.state.extra["batch"])), 4), packing=self.packing,
            memory=memory, records=records, dropped=dropped, n_examples=len(self.train_ex),
            val_batches=self.val_batches, recipe_yaml=self.recipe_yaml, model_path=model_path,
            peak_flops=peak_flops, home=domaintune_home())
