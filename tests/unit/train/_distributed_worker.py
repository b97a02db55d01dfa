"""One process of a 2-process job for test_distributed.py, started the way a launcher would.

    python _distributed_worker.py '{"rank": 0, "world": 2, "port": 29511, "model": "...", "out": "rank0.json",
                                    "runs": [{"run_dir": "...", "train": {...TrainConfig...}, "resume": false,
                                              "interrupt": [1, 3]}]}'

It sets the variables `accelerate launch`/torchrun set (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), trains the tiny model with `run_training` once per
entry of `runs` (gloo on CPU, one thread; one process group for all, so torch is imported once),
then shards a LoRA model both ways to see what each process holds, and writes what it saw as JSON to `out`, including every file it wrote, renamed or deleted in a
run folder (seen through Python's audit hooks). `"interrupt": [rank, k]` sends SIGINT (Ctrl-C) to
that rank alone during its k-th training forward pass.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path


def chat(a: int, k: int) -> dict:
    """A conversation whose answer is k words long: uneven micro-batches make the n_i/N weights matter."""
    return {"messages": [{"role": "user", "content": f"Count {k} times from {a}"},
                         {"role": "assistant", "content": " ".join(str(a + i) for i in range(k))}]}


def records() -> tuple[list[dict], list[dict]]:
    rng = random.Random(7)
    rows = [chat(rng.randint(1, 9), rng.randint(1, 12)) for _ in range(44)]
    return rows[:36], rows[36:]


def train(model_dir: str, run_dir: str, train_cfg: dict, resume: bool = False, interrupt_at: int | None = None,
          force: bool = False):
    from domaintune.config import TrainConfig
    from domaintune.methods.base import get_method
    from domaintune.models.load import load_model, load_tokenizer
    from domaintune.models.templates import get_template
    from domaintune.train.loop import run_training

    cfg = TrainConfig.model_validate(train_cfg)
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    if interrupt_at:
        interrupt_after(model, interrupt_at)
    return run_training(model, tokenizer, get_template("auto", tokenizer), get_method(cfg.method.method),
                        cfg.method, *records(), cfg, Path(run_dir), "train: {}\n", model_path=Path(model_dir),
                        resume=resume, force=force, progress=False)


def interrupt_after(model, forwards: int) -> None:
    """SIGINT to this process during its `forwards`-th training forward pass (validation runs in eval mode)."""
    calls = []

    def hook(module, args, output):
        if module.training:
            calls.append(1)
            if len(calls) == forwards:
                signal.raise_signal(signal.SIGINT)

    model.get_input_embeddings().register_forward_hook(hook)


def watch_writes(folders: list[str]) -> list[str]:
    """Record each write-open, rename and delete of a path under `folders` (mkdir is allowed: all ranks make the run folder)."""
    seen: list[str] = []
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if not (mode and any(c in mode for c in "wax+")) and not (mode is None and flags & writing):
                return
        elif event not in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            return
        if isinstance(args[0], (str, os.PathLike)) and str(args[0]).startswith(tuple(folders)):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def shard_facts(model_dir: str, strategy: str) -> dict[str, object]:
    """What one process holds of a LoRA model under `strategy` after one AdamW step (parameters,
    gradients and optimizer states, local bytes) beside what `estimate_memory` says it holds."""
    import torch

    from domaintune.config import LoraOptions
    from domaintune.methods.base import get_method
    from domaintune.models.load import load_model
    from domaintune.train.distributed import init_distributed
    from domaintune.train.sharding import shard_model
    from domaintune.train.summary import estimate_memory

    model = get_method("lora").apply(load_model(model_dir), LoraOptions(r=4, layers="all"))
    shard_model(model, init_distributed(), strategy)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.arange(1, 9)[None]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    local = [p.to_local() for p in model.parameters()]
    states = [v.to_local() for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    grads = [p.grad.to_local() for p in model.parameters() if p.grad is not None]
    held = sum(t.numel() * t.element_size() for t in [*local, *states, *grads])
    estimate = estimate_memory(model, 8, False, world=int(os.environ["WORLD_SIZE"]), strategy=strategy)
    return {"local": sum(t.numel() for t in local), "whole": sum(p.numel() for p in model.parameters()),
            "placements": sorted({str(p.placements) for p in model.parameters()}), "held_bytes": held,
            "estimated_bytes": estimate.params + estimate.grads + estimate.optimizer}


def main(spec: dict) -> None:
    os.environ.update({"RANK": str(spec["rank"]), "LOCAL_RANK": str(spec["rank"]), "WORLD_SIZE": str(spec["world"]),
                       "LOCAL_WORLD_SIZE": str(spec["world"]), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(spec["port"]), "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    runs, writes = [], watch_writes([run["run_dir"] for run in spec["runs"]])
    for run in spec["runs"]:
        rank, forwards = run.get("interrupt", (None, None))
        try:
            result = train(spec["models"].get(run.get("model"), spec["model"]), run["run_dir"], run["train"],
                           run.get("resume", False),
                           forwards if rank == spec["rank"] else None)
        except KeyboardInterrupt as stopped:
            runs.append({"interrupted": str(stopped)})
            continue
        runs.append({"steps": result.steps, "strategy": result.summary.get("distributed"), "best_step": result.best_step, "best_val_loss": result.best_val_loss,
                     "base_val_loss": result.base_val_loss, "tokens": result.tokens, "artifact": str(result.artifact),
                     "processes": result.summary.get("processes"), "threads": torch.get_num_threads()})
    seen = {"runs": runs, "writes": writes,
            "shards": {kind: shard_facts(spec["model"], kind) for kind in ("ddp", "fsdp2")}}
    Path(spec["out"]).write_text(json.dumps(seen), encoding="utf-8")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
