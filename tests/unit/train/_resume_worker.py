"""A tiny, fully deterministic training loop for the checkpoint tests; also a script for SIGKILL tests.

The loop has everything that makes resume hard: AdamW, a warmup+cosine LambdaLR, gradient
accumulation over 3 micro-batches, dropout (torch RNG), input noise (NumPy RNG), a random loss
weight (Python RNG) and a seeded shuffled data order that spans several epochs.

As a script it is a fork server (see `serve`): each JSON line on stdin is one training run that
resumes from the newest complete checkpoint in run_dir (if any), trains while checkpointing after
every micro-batch, and writes the final weights and the consumed sample ids to out. ``"kill":
"EVENT@STEP.MICRO"`` makes the run SIGKILL itself at an exact point, so kills are deterministic
rather than timed:

    {"run_dir": "r", "out": "o.safetensors", "kill": "after_backward@1.2"}
    {"run_dir": "r", "out": "o.safetensors", "kill": "save:optimizer.safetensors@3.0"}
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from domaintune.train import checkpoint, resume_checks
from domaintune.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from domaintune.train.rng import capture_rng, restore_rng

ACCUM, BATCH, N_SAMPLES, FEATURES, CLASSES = 3, 4, 24, 8, 4
DATA_ORDER_SEED = 1234
RECIPE = "train:\n  learning_rate: 0.01\n  grad_accum: 3\n  steps: 6\nmethod: full\n"


def _warmup_cosine(step: int, total: int, warmup: int = 2) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build(total_steps: int):
    """Model, AdamW and scheduler, identically initialised every time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_warmup_cosine, total=total_steps))
    return model, opt, sched


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(N_SAMPLES, FEATURES, generator=g), torch.randint(0, CLASSES, (N_SAMPLES,), generator=g)


def _batch_ids(state: TrainState) -> list[int]:
    epoch = state.samples_seen // N_SAMPLES
    perm = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(state.data_order_seed + epoch))
    start = state.samples_seen % N_SAMPLES
    return perm[start:start + BATCH].tolist()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_into(path: Path, model: nn.Module, opt, sched, *, restore_rng_state: bool = True,
                restore_grads: bool = True) -> TrainState:
    """Load a checkpoint into fresh objects the way a training loop would."""
    names = [n for n, _ in model.named_parameters()]
    params, state, rng, _recipe, grads = load_checkpoint(path, opt, sched, names)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
            p.grad = grads[n] if grads is not None and restore_grads and n in grads else None
    if restore_rng_state:
        restore_rng(rng)
    return state


def train(run_dir: Path | None, total_steps: int, *, resume_from: Path | None = None,
          stop_at: tuple[int, int] | None = None, on_event: Callable[[str, TrainState], None] | None = None,
          **resume_kw) -> tuple[nn.Module, TrainState]:
    """Train to ``total_steps`` (or until position ``stop_at``); checkpoint every micro-batch if run_dir."""
    model, opt, sched = build(total_steps)
    _seed_all(0)
    state = TrainState(data_order_seed=DATA_ORDER_SEED, extra={"consumed": []})
    if resume_from is not None:
        _seed_all(12345)  # scramble: whatever follows must come from the checkpoint
        state = resume_into(resume_from, model, opt, sched, **resume_kw)
    event = on_event or (lambda name, st: None)
    x_all, y_all = _data()
    model.train()
    while state.step < total_steps and (state.step, state.micro_step) != stop_at:
        ids = _batch_ids(state)
        noise = torch.from_numpy(np.random.standard_normal((BATCH, FEATURES)).astype(np.float32))
        loss = (1.0 + 0.1 * random.random()) * F.cross_entropy(model(x_all[ids] + 0.05 * noise), y_all[ids])
        (loss / ACCUM).backward()
        state.micro_step += 1
        state.samples_seen += BATCH
        state.epoch = state.samples_seen // N_SAMPLES
        state.extra["consumed"].extend(ids)
        event("after_backward", state)
        if state.micro_step == ACCUM:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state.step, state.micro_step = state.step + 1, 0
            event("after_optimizer_step", state)
        if run_dir is not None:
            _save(run_dir, model, opt, sched, state)
    return model, state


def _save(run_dir: Path, model: nn.Module, opt, sched, state: TrainState) -> Path:
    params = dict(model.named_parameters())
    grads = {n: p.grad for n, p in params.items() if p.grad is not None} if state.micro_step else None
    return save_checkpoint(run_dir, state.step, params, opt, sched, state, RECIPE, capture_rng(),
                           keep_last=2, accum_grads=grads)


def _killer(spec: str | None) -> Callable[[str, TrainState], None]:
    """Hook that SIGKILLs this process at EVENT@STEP.MICRO (``save:<file>`` events fire inside a save)."""
    if not spec:
        return lambda name, st: None
    event, where = spec.split("@")
    step, micro = (int(v) for v in where.split("."))
    if event.startswith("save:"):
        target = (event.removeprefix("save:"), checkpoint.checkpoint_name(step, micro))

        def after_write(path: Path) -> None:
            if (path.name, path.parent.name.removeprefix(".tmp-").rsplit("-", 1)[0]) == target:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint._after_write_hook = after_write
        return lambda name, st: None

    def on_event(name: str, st: TrainState) -> None:
        if (name, st.step, st.micro_step) == (event, step, micro):
            os.kill(os.getpid(), signal.SIGKILL)
    return on_event


def _run_one(cmd: dict) -> None:
    """One training run, as a fresh process would do it: resume from the newest checkpoint, train, save."""
    run_dir, out = Path(cmd["run_dir"]), Path(cmd["out"])
    logging.basicConfig(level=logging.WARNING, filename=str(out.with_suffix(".log")), force=True)
    latest = None if cmd.get("no_save") else checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        resume_checks.check_resume_recipe((latest / "recipe.resolved.yaml").read_text(), RECIPE, force=False)
    out.with_suffix(".resumed").write_text(latest.name if latest else "")
    model, state = train(None if cmd.get("no_save") else run_dir, cmd.get("steps", 6), resume_from=latest,
                         on_event=_killer(cmd.get("kill")))
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(state.extra["consumed"]))


def serve() -> None:
    """Fork server: warm torch up once, then run each JSON command from stdin in a forked child.

    Every child is a separate process that builds its own model and optimizer and resumes from disk
    only; a child that SIGKILLs itself dies like a killed trainer. Answers one JSON line per command:
    ``{"pid": ..., "signal": 9}`` or ``{"pid": ..., "exit": 0}``. Forking skips the ~5 s that a fresh
    interpreter spends importing torch and torch._dynamo (which AdamW pulls in) for each run.
    """
    torch.set_num_threads(1)
    train(None, 1)  # warm-up: imports and first-call dispatch, so children start in milliseconds
    for line in sys.stdin:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _run_one(json.loads(line))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        result = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        print(json.dumps({"pid": pid, **result}), flush=True)


if __name__ == "__main__":
    serve()
