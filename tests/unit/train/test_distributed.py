"""Tests for domaintune.train.distributed + sharding: 2 CPU processes (gloo) against one process, same global batch.

The 2-process job is `_distributed_worker.py` started twice with the variables a launcher sets;
the reference is `run_training` in this process with `grad_accum` twice the per-process value.
Under both strategies (ddp: FSDP2 replicated; fsdp2: sharded) the runs must give the same loss
curve (1e-5 relative) and the same adapter (1e-5). Under fsdp2 the same job also trains with
dropout 4 steps straight, and again with Ctrl-C sent to rank 1 alone in step 2 then resumed: both
ranks must stop after step 2 with a checkpoint, and the resumed adapter must be bit-identical to
the straight one, which needs every process's RNG back; one process then resumes the fsdp2 run's
step-2 checkpoint (forced) and ends where one process and two do. Each process holds about half
the parameters under fsdp2, all of them under ddp. The pieces (dealing micro-batches, global token
weights, equal validation shares, the resume check) are also tested alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from domaintune.errors import UserError
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.callbacks import read_metrics
from domaintune.train.data import BatchStream, encode_split
from domaintune.train.distributed import Dist, check_world, init_distributed, shard
from domaintune.train.sharding import equal_shares
from domaintune.train.step import accumulate_gradients

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_distributed_worker", HERE / "_distributed_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

ACCUM, WORLD = 2, 2
TRAIN = dict(max_steps=4, learning_rate=1e-2, batch_tokens=48, eval_every=2, save_every=2, threads=1,
             warmup_ratio=0.0, early_stopping_patience=None, method={"method": "lora", "r": 4, "dropout": 0.0,
                                                                     "layers": "all"})
FSDP2 = {"strategy": "fsdp2"}
NOISY = {**TRAIN, "grad_accum": ACCUM, "method": {**TRAIN["method"], "dropout": 0.2},  # dropout draws numbers
         "distributed": FSDP2}
FULL = {**TRAIN, "learning_rate": 1e-3, "method": {"method": "full"}}
# Beside the LLaMA: Qwen2 (tied embeddings: one root unit) and DeepSeek-V3 (MoE experts, MLA) under fsdp2,
# and full fine-tuning (every weight sharded and saved whole).
MODELS = {"qwen2": ("tiny_qwen2", TRAIN), "moe": ("tiny_deepseek_v3", TRAIN), "full": ("tiny_llama", FULL)}
RUNS = {"run": {"train": {**TRAIN, "grad_accum": ACCUM}},
        "sharded": {"train": {**TRAIN, "grad_accum": ACCUM, "distributed": FSDP2}},
        **{name: {"model": name, "train": {**cfg, "grad_accum": ACCUM, "distributed": FSDP2}}
           for name, (_, cfg) in MODELS.items()},
        "straight": {"train": NOISY},
        # Ctrl-C on rank 1 in its 3rd training forward pass: the first micro-batch of step 2.
        "interrupted": {"train": NOISY, "interrupt": [1, ACCUM + 1]}, "resumed": {"train": NOISY, "resume": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models(request) -> dict[str, str]:
    return {name: str(request.getfixturevalue(fixture)) for name, (fixture, _) in MODELS.items()}


@pytest.fixture(scope="module")
def two_processes(tiny_llama, models, tmp_path_factory):
    """The 2-process job: its folder and what each rank returned ({"runs": [one per RUNS entry], "shards"})."""
    root = tmp_path_factory.mktemp("distributed")
    # CPU and gloo even on a GPU machine (two processes cannot share one GPU under NCCL).
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    runs = [{**run, "run_dir": str(root / ("resumable" if name in ("interrupted", "resumed") else name))}
            for name, run in RUNS.items()]
    specs = [{"rank": r, "world": WORLD, "port": port, "model": str(tiny_llama), "models": models, "runs": runs,
              "out": str(root / f"rank{r}.json")} for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "_distributed_worker.py"), json.dumps(s)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in specs]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return root, [json.loads(Path(s["out"]).read_text()) for s in specs]


@pytest.fixture(scope="module")
def one_process(tiny_llama, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    with pytest.MonkeyPatch.context() as mp:  # on the CPU in fp32, as the two processes (no bf16 autocast)
        mp.setattr(torch.cuda, "is_available", lambda: False)
        worker.train(str(tiny_llama), str(run_dir), {**TRAIN, "grad_accum": ACCUM * WORLD})
    return run_dir


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a run's artifact (a PEFT adapter, or the whole model for full fine-tuning)."""
    if (run_dir / "model").is_dir():
        return {k: v for f in sorted((run_dir / "model").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def single_models(models, tmp_path_factory) -> dict[str, Path]:
    """One process with the global batch, for each model of MODELS."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        for name, (_, cfg) in MODELS.items():
            out[name] = tmp_path_factory.mktemp(f"single-{name}") / "run"
            worker.train(models[name], str(out[name]), {**cfg, "grad_accum": ACCUM * WORLD})
    return out


# ------------------------------------------------------------------------------------ two processes

@pytest.mark.parametrize("name", ["run", "sharded"])
def test_two_processes_follow_the_single_process_loss_curve(two_processes, one_process, name):
    run_dir = two_processes[0] / name
    dist_lines, single_lines = read_metrics(run_dir / "metrics.jsonl"), read_metrics(one_process / "metrics.jsonl")
    assert [(r["type"], r["step"]) for r in dist_lines] == [(r["type"], r["step"]) for r in single_lines]
    train = [(a, b) for a, b in zip(dist_lines, single_lines) if a["type"] == "train"]
    assert len(train) == TRAIN["max_steps"] and train[0][1]["loss"] > train[-1][1]["loss"]  # it learned
    for a, b in train:
        assert (a["tokens"], a["supervised_tokens"]) == (b["tokens"], b["supervised_tokens"])  # the same global batch
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for a, b in zip(dist_lines, single_lines):
        if a["type"] == "val":
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


@pytest.mark.parametrize("name", ["run", "sharded"])
def test_two_processes_train_the_same_adapter(two_processes, one_process, name):
    got, want = adapter(two_processes[0] / name), adapter(one_process)
    assert got.keys() == want.keys()
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in want.items() if "lora_B" in n)  # it moved
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_every_rank_returns_the_same_result_and_only_rank_0_writes(two_processes, one_process):
    root, ranks = two_processes
    run_dir, first = root / "run", ranks[0]["runs"][0]
    assert ranks[0]["runs"] == ranks[1]["runs"]
    assert first["processes"] == WORLD and first["steps"] == TRAIN["max_steps"] and first["threads"] == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == WORLD and summary["train"]["tokens"] == first["tokens"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    state = json.loads((run_dir / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["extra"]["world_size"] == WORLD and len(state["extra"]["rank_rng"]) == WORLD - 1
    assert ranks[1]["writes"] == []
    assert any("metrics.jsonl" in w for w in ranks[0]["writes"])  # the watch sees rank 0's writes
    assert any(w.startswith("os.rename") and "checkpoints" in w for w in ranks[0]["writes"])


def test_ctrl_c_on_one_rank_stops_all_after_the_step_and_resumes_bit_identically(two_processes):
    root, ranks = two_processes
    for seen in ranks:  # rank 0 got no signal, yet stopped with rank 1
        _, interrupted, resumed = seen["runs"][-3:]
        assert "step-000002" in interrupted["interrupted"] and resumed["steps"] == 4
    assert (root / "resumable" / "checkpoints" / "step-000002").is_dir()
    straight, resumed = adapter(root / "straight"), adapter(root / "resumable")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # Dropout really drew numbers: the noisy run differs from the dropout-free one.
    assert any(not torch.equal(straight[n], t) for n, t in adapter(root / "run").items())
    step_2 = json.loads((root / "resumable" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert "rank_rng" in step_2["extra"]


@pytest.mark.parametrize("name", list(MODELS))
def test_fsdp2_on_qwen2_moe_and_full_fine_tuning_matches_one_process(two_processes, single_models, name):
    root, ranks = two_processes
    assert {seen["runs"][list(RUNS).index(name)]["strategy"] for seen in ranks} == {"fsdp2"}
    dist_lines = read_metrics(root / name / "metrics.jsonl")
    single_lines = read_metrics(single_models[name] / "metrics.jsonl")
    for a, b in zip(dist_lines, single_lines, strict=True):
        key = "loss" if a["type"] == "train" else "val_loss"
        assert a[key] == pytest.approx(b[key], rel=1e-5), (a, b)
    got, want = adapter(root / name), adapter(single_models[name])
    assert got.keys() == want.keys()
    for tensor_name in want:
        torch.testing.assert_close(got[tensor_name], want[tensor_name], rtol=1e-5, atol=1e-6)


def test_fsdp2_shards_the_parameters_and_ddp_replicates_them(two_processes):
    _, ranks = two_processes
    sharded = [seen["shards"]["fsdp2"] for seen in ranks]
    replicated = [seen["shards"]["ddp"] for seen in ranks]
    whole = sharded[0]["whole"]
    assert sum(s["local"] for s in sharded) >= whole  # every element on some process (dim 0 padded)
    for s in sharded:
        assert abs(s["local"] - whole / WORLD) <= 0.05 * whole and s["placements"] == ["(Shard(dim=0),)"]
    assert all(r["local"] == whole and r["placements"] == ["(Replicate(), Shard(dim=0))"] for r in replicated)
    # The pre-flight estimate of what stays resident per process (weights, gradients, AdamW states)
    # against the local bytes each process holds after a step: within 20 % under both strategies.
    for facts in sharded + replicated:
        assert facts["estimated_bytes"] == pytest.approx(facts["held_bytes"], rel=0.2), facts


def test_a_two_process_checkpoint_resumes_on_one_process(two_processes, one_process, tiny_llama, tmp_path):
    import shutil

    run_dir = tmp_path / "continued"
    shutil.copytree(two_processes[0] / "sharded", run_dir)
    for late in (run_dir / "checkpoints").iterdir():
        if late.name != "step-000002":
            shutil.rmtree(late)
    cfg = {**TRAIN, "grad_accum": ACCUM * WORLD}  # the same global batch on one process
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(UserError, match="2 process"):  # another process count: refused unless forced
            worker.train(str(tiny_llama), str(run_dir), cfg, resume=True)
        result = worker.train(str(tiny_llama), str(run_dir), cfg, resume=True, force=True)
    assert result.steps == TRAIN["max_steps"]
    got, want = adapter(run_dir), adapter(one_process)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ pieces, in-process

def test_one_process_without_a_launcher_stays_single(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = init_distributed()
    assert (dist.rank, dist.world, dist.active, dist.main) == (0, 1, False, True)
    assert not torch.distributed.is_initialized()


@given(st.lists(st.integers(), max_size=30), st.integers(1, 5))
def test_dealing_gives_every_item_to_exactly_one_process(items, world):
    parts = [shard(items, Dist(rank=r, world=world)) for r in range(world)]
    assert sorted(x for part in parts for x in part) == sorted(items)
    assert [parts[i % world][i // world] for i in range(len(items))] == items  # item i goes to process i mod W


@given(st.integers(0, 9), st.integers(1, 4))
def test_validation_shares_are_equal_and_count_every_batch_once(n, world):
    batches = list(range(n))
    shares = [equal_shares(batches, r, world) for r in range(world)]
    assert len({len(mine) for mine, _ in shares}) <= 1  # every process runs as many forwards
    assert sorted(x for mine, counted in shares for x in mine[:counted]) == batches


def test_take_deals_the_steps_micro_batches(tiny_tokenizer):
    examples, _ = encode_split(worker.records()[0], tiny_tokenizer, get_template("auto", tiny_tokenizer), 256)
    stream = BatchStream(examples, 0, True, 48, 1, tiny_tokenizer.pad_token_id)
    whole, after, n = stream.take(0, 3, 4)
    parts = [stream.take(0, 3, 4, part=(r, 2)) for r in range(2)]
    assert all((p[1], p[2]) == (after, n) for p in parts)  # the position and count are the step's
    dealt = [parts[0][0][0], parts[1][0][0], parts[0][0][1], parts[1][0][1]]
    for a, b in zip(dealt, whole):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shares_weighted_by_the_global_token_count_add_up_to_the_whole_step(tiny_llama):
    # What two processes compute, done in turn here: each share weighted by the step's N.
    tokenizer, model = load_tokenizer(tiny_llama), load_model(tiny_llama)
    examples, _ = encode_split(worker.records()[0], tokenizer, get_template("auto", tokenizer), 256)
    stream = BatchStream(examples, 0, True, 48, 1, tokenizer.pad_token_id)
    whole = stream.take(0, 0, 4)[0]
    loss_sum, supervised, tokens = accumulate_gradients(model, whole)
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    shares = [accumulate_gradients(model, stream.take(0, 0, 4, part=(r, 2))[0], totals=(supervised, tokens))
              for r in range(2)]
    assert sum(s[0] for s in shares) == pytest.approx(loss_sum, rel=1e-6)
    assert {s[1:] for s in shares} == {(supervised, tokens)}
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-5, atol=1e-7)


def test_resuming_with_another_process_count_is_refused_unless_forced():
    check_world(1, 0, Dist(), force=False)
    with pytest.raises(UserError, match="2 process.*this run has 1"):
        check_world(2, 0, Dist(), force=False)
    check_world(2, 0, Dist(), force=True)
    with pytest.raises(UserError, match="mid-accumulation"):
        check_world(1, 3, Dist(rank=0, world=2), force=True)


def test_what_several_processes_do_not_do_yet_is_refused_in_one_line():
    from domaintune.train.sharding import refuse_unsupported

    refuse_unsupported("fsdp2", ewc=False, decodes=False)
    refuse_unsupported("ddp", ewc=False, decodes=True)  # process 0 decodes alone: no collective in a replica
    with pytest.raises(UserError, match="ewc"):
        refuse_unsupported("ddp", ewc=True, decodes=False)
    with pytest.raises(UserError, match="decode"):
        refuse_unsupported("fsdp2", ewc=False, decodes=True)


def test_an_accelerate_fsdp_config_selects_fsdp2(monkeypatch):
    from domaintune.config import TrainConfig
    from domaintune.train.loop import _accelerate_fsdp

    cfg, dist = TrainConfig(), Dist(rank=1, world=2)
    assert _accelerate_fsdp(cfg, dist).distributed.strategy == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _accelerate_fsdp(cfg, dist).distributed.strategy == "fsdp2"
    assert cfg.distributed.strategy == "ddp"  # the recipe object itself is left as it was
