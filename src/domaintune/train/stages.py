"""Multi-stage training (`train.stages`): e.g. general data first, then the domain, one model throughout.

    run_dir/stage-1/   checkpoints, metrics, summary.json, adapter/ (the stage's best), final.safetensors
    run_dir/stage-2/   ...
    run_dir/adapter/   the last stage's best, copied; run_dir/summary.json lists every stage

Each stage is an ordinary run (`run.train_run`) in its own folder, with a fresh optimizer and LR
schedule. The next stage starts from the weights the stage saved as its artifact (its best
step), kept as `final.safetensors`; `stage_done.json`, written last, marks a stage finished. On
`--resume`, finished stages are skipped (their final weights loaded, their recipe checked) and
the stage in progress resumes from its newest checkpoint. Each stage after the first reseeds
Python, NumPy and torch with the run's seed, so skipping a finished stage changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from domaintune.config import TrainConfig
from domaintune.errors import UserError
from domaintune.files import atomic_path, write_json_atomic, write_text_atomic
from domaintune.train import summary as facts
from domaintune.train.resume_checks import check_resume_recipe
from domaintune.train.inputs import Inputs
from domaintune.methods.artifact import RECIPE_FILE, SUMMARY_FILE
from domaintune.train.run import Shared, TrainResult, clear_old_checkpoints, seed_all, train_run

STAGE_DONE = "stage_done.json"
FINAL_WEIGHTS = "final.safetensors"


def stage_dir(run_dir: Path, number: int) -> Path:
    """The folder of stage `number` (1-based)."""
    return Path(run_dir) / f"stage-{number}"


def run_stages(shared: Shared, configs: Sequence[TrainConfig], inputs: Sequence[Inputs], run_dir: Path,
               resume: bool, force: bool) -> TrainResult:
    """Train stage after stage, the model carried over; the result is the last stage's best.

    Args:
        shared: the model (method applied), method, recipe and callbacks.
        configs: one train section per stage (`TrainConfig.stage_configs`).
        inputs: each stage's encoded data.
        run_dir: the run folder; stage k writes `run_dir/stage-k`.
        resume: skip finished stages and resume the one in progress.
        force: as in `run_training`; without resume, every stage starts over.

    Returns:
        The last stage's `TrainResult`, with `run_dir`, `artifact` and `summary` of the whole run
        and `stages` holding each stage's facts.

    Example:
        >>> result = run_stages(shared, cfg.stage_configs(), inputs, Path("runs/a"), False, False)  # doctest: +SKIP
        >>> [s["stage"] for s in result.stages]                                                 # doctest: +SKIP
        [1, 2]
    """
    folders = [stage_dir(run_dir, k) for k in range(1, len(configs) + 1)]
    if not resume:
        for folder in folders:
            clear_old_checkpoints(folder, force)
            (folder / STAGE_DONE).unlink(missing_ok=True)
    done: list[dict[str, Any]] = []
    result = None
    for number, (cfg, data, folder) in enumerate(zip(configs, inputs, folders), 1):
        last = number == len(configs)
        if resume and not last and (folder / STAGE_DONE).is_file():
            done.append(_skip_finished(shared, folder, force))
            continue
        if number > 1:
            seed_all(cfg.seed)
        result = train_run(shared, cfg, data, folder, resume and folder.is_dir(), force)
        fact = _stage_fact(number, cfg, result)
        if not last:
            _mark_finished(shared, folder, fact)
        done.append(fact)
    return _finish(shared, Path(run_dir), result, done)


def _stage_fact(number: int, cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {"stage": number, "run_dir": str(result.run_dir), "data_dir": cfg.data_dir, "steps": result.steps,
            "stop_reason": result.stop_reason, "best_step": result.best_step, "base_val_loss": result.base_val_loss,
            "best_val_loss": result.best_val_loss, "final_val_loss": result.final_val_loss}


def _trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _mark_finished(shared: Shared, folder: Path, fact: dict[str, Any]) -> None:
    """Keep the weights the next stage starts from, then write the marker (atomically, last)."""
    weights = folder / FINAL_WEIGHTS
    with atomic_path(weights) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(shared.model).items()}, str(tmp))
    with open(weights, "rb") as f:
        fact = {**fact, "weights_sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    write_json_atomic(folder / STAGE_DONE, fact)


def _skip_finished(shared: Shared, folder: Path, force: bool) -> dict[str, Any]:
    """Load a finished stage's final weights into the model (its recipe must match); return its facts."""
    check_resume_recipe((folder / RECIPE_FILE).read_text(encoding="utf-8"), shared.recipe_yaml, force)
    fact = json.loads((folder / STAGE_DONE).read_text(encoding="utf-8"))
    weights_file = folder / FINAL_WEIGHTS
    with open(weights_file, "rb") as f:
        intact = hashlib.file_digest(f, "sha256").hexdigest() == fact.pop("weights_sha256")
    if not intact:
        raise UserError("a finished stage's final weights do not match their hash", file=str(weights_file),
                        hint=f"delete {folder / STAGE_DONE} to train that stage again")
    weights = load_file(str(weights_file))
    with torch.no_grad():
        for name, param in _trainable(shared.model).items():
            param.copy_(weights[name])
    return fact


def _finish(shared: Shared, run_dir: Path, last: TrainResult, stages: list[dict[str, Any]]) -> TrainResult:
    """Copy the last stage's artifact to the run folder and write the run's summary and recipe."""
    artifact = run_dir / last.artifact.name
    shutil.rmtree(artifact, ignore_errors=True)
    shutil.copytree(last.artifact, artifact)
    write_text_atomic(run_dir / RECIPE_FILE, shared.recipe_yaml)
    summary = {**last.summary, "stages": stages}
    facts.write_summary(run_dir / SUMMARY_FILE, summary)
    return dataclasses.replace(last, run_dir=run_dir, artifact=artifact, summary=summary, stages=stages)
