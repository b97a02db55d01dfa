"""Tests for domaintune.train.loop: a real loop on tiny LLaMA, one thread, a few steps each.

Covers: outputs and a falling validation loss; the saved artifact is the best step's and reloads
to its loss; early stopping; refusing data with nothing to train; 2x2 accumulation equal to 1x4;
bit-identical resume after a crash and after Ctrl-C mid-accumulation; recipe checks on resume;
every registered CPU method through `run_training`. The guards against forgetting and the loss
hook are in test_run.py, stages in test_stages.py, one step's arithmetic in test_step.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from domaintune.config import (METHOD_NAMES, AdapterOptions, FreezeOptions, FullOptions, IA3Options, LayerGroupConfig, LoraOptions,
                               PrefixOptions, PromptOptions, TrainConfig)
from domaintune.errors import UserError
from domaintune.methods.base import get_method, saved_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.data import collate_rows, encode_split, epoch_batches, load_split
from domaintune.train.loop import run_training, validation_loss
from domaintune.train.summary import estimate_memory, file_sha256, flops_per_token, memory_warning, peak_flops_for

RECIPE = "train:\n  learning_rate: 0.01\n"
OPTIONS = {
    "lora": LoraOptions(layers="all", r=4, dropout=0.0),
    "prefix": PrefixOptions(num_virtual_tokens=4),
    "prompt": PromptOptions(num_virtual_tokens=4, init_text="The answer is"),
    "ia3": IA3Options(),
    "adapter": AdapterOptions(bottleneck=8),
    "full": FullOptions(),
    "freeze": FreezeOptions(train_top=1),
}


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}


@pytest.fixture(scope="module")
def records() -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    rows = [chat(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(40)]
    return rows[:32], rows[32:]


def config(**overrides) -> TrainConfig:
    settings = dict(max_steps=6, learning_rate=1e-2, batch_tokens=128, eval_every=3, save_every=2, threads=1,
                    warmup_ratio=0.0, method=LoraOptions(layers="all", r=4, dropout=0.0), early_stopping_patience=None)
    return TrainConfig(**{**settings, **overrides})


def train(model_dir, run_dir, cfg, records, recipe=RECIPE, **kwargs):
    tokenizer = load_tokenizer(model_dir)
    return run_training(load_model(model_dir), tokenizer, get_template("auto", tokenizer),
                        get_method(cfg.method.method), cfg.method, records[0], records[1], cfg, run_dir, recipe,
                        model_path=model_dir, progress=False, **kwargs)


def reloaded_val_loss(model_dir, artifact, cfg, val_records) -> float:
    tokenizer = load_tokenizer(model_dir)
    model = get_method(saved_method(artifact)).load(load_model(model_dir), artifact)
    examples, _ = encode_split(val_records, tokenizer, get_template("auto", tokenizer), cfg.max_len)
    rows = epoch_batches(examples, 0, cfg.seed, True, cfg.batch_tokens, cfg.batch_size)
    return validation_loss(model, collate_rows(examples, rows, True, tokenizer.pad_token_id))


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------------------------- a run

def test_lora_run_lowers_val_loss_and_writes_every_output(tiny_llama, tmp_path, records):
    cfg = config(max_steps=9)
    result = train(tiny_llama, tmp_path, cfg, records)
    assert result.steps == 9 and result.stop_reason == "completed"
    assert result.best_val_loss < result.base_val_loss - 0.1
    for name in ("metrics.jsonl", "summary.json", "loss.png", "recipe.resolved.yaml", "adapter/adapter_config.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "recipe.resolved.yaml").read_text() == RECIPE
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "train"] == list(range(1, 10))
    assert [r["step"] for r in lines if r["type"] == "val"] == [0, 3, 6, 9]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["train"]["tokens"] == result.tokens > summary["train"]["supervised_tokens"]
    assert summary["lineage"]["base_model"]["files"]["model.safetensors"] and len(summary["lineage"]["recipe_sha256"]) == 64
    assert summary["mfu"] is None and "peak FLOP/s" in summary["mfu_note"]
    assert reloaded_val_loss(tiny_llama, tmp_path / "adapter", cfg, records[1]) == pytest.approx(
        result.best_val_loss, abs=1e-5)


def test_lineage_hashes_the_data_files(tiny_llama, tmp_path, records):
    for name, rows in zip(("train", "val"), records):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_split(tmp_path / "train.jsonl"), load_split(tmp_path / "val.jsonl")
    result = train(tiny_llama, tmp_path / "run", config(max_steps=1), splits, peak_flops=1e12)
    lineage = result.summary["lineage"]
    assert lineage["train_data"]["sha256"] == splits[0].sha256 != lineage["val_data"]["sha256"]
    assert 0 < result.summary["mfu"] < 1


def test_early_stopping_keeps_the_best_step(tiny_llama, tmp_path, records):
    # Full fine-tuning at LR 0.3 overshoots: the first step is the best, later ones are worse.
    cfg = config(method=FullOptions(), learning_rate=0.3, scheduler="constant", eval_every=1, max_steps=12,
                 early_stopping_patience=3, save_every=50, keep_checkpoints=1)
    result = train(tiny_llama, tmp_path, cfg, records)
    assert result.stop_reason == "early_stopping" and result.steps == result.best_step + 3 < 12
    assert result.final_val_loss > result.best_val_loss
    assert (tmp_path / "checkpoints" / f"step-{result.best_step:06d}").is_dir()  # protected from rotation
    assert reloaded_val_loss(tiny_llama, tmp_path / "model", cfg, records[1]) == pytest.approx(
        result.best_val_loss, abs=1e-5)


def test_refuses_when_no_token_would_be_trained(tiny_llama, tmp_path, records):
    prompts_only = tmp_path / "train.jsonl"
    prompts_only.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi there"}]}) + "\n")
    with pytest.raises(UserError, match="assistant answer") as err:
        train(tiny_llama, tmp_path / "a", config(), (load_split(prompts_only), records[1]))
    assert str(prompts_only) in str(err.value) and "train_on_prompt" in str(err.value)
    with pytest.raises(UserError, match="longer than max_len=8"):
        train(tiny_llama, tmp_path / "b", config(max_len=8), records)


# ------------------------------------------------------------------------------------ accumulation

def test_loop_accumulation_2x2_equals_1x4(tiny_llama, tmp_path, records):
    # Padded batches of 2 with accumulation 2 see the same 4 examples per step as batches of 4
    # (length grouping orders them the same); answers of 1 to 8 words make the halves uneven.
    uneven = [{"messages": [{"role": "user", "content": f"Say hello {k} times"},
                            {"role": "assistant", "content": " ".join(["hello"] * k)}]} for k in range(1, 9)] * 2
    common = dict(packing=False, max_steps=2, save_every=10, eval_every=10)
    a = train(tiny_llama, tmp_path / "a", config(batch_size=2, grad_accum=2, **common), (uneven, records[1]))
    b = train(tiny_llama, tmp_path / "b", config(batch_size=4, grad_accum=1, **common), (uneven, records[1]))
    wa, wb = weights(a.artifact), weights(b.artifact)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ resume

RESUME_CFG = dict(max_steps=6, grad_accum=2, batch_tokens=64, save_every=2, eval_every=2, keep_checkpoints=5,
                  method=LoraOptions(layers="all", r=4, dropout=0.1), neftune_alpha=5.0)  # dropout and noise draw random numbers


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory, records):
    run_dir = tmp_path_factory.mktemp("reference")
    train(tiny_llama, run_dir, config(**RESUME_CFG), records)
    return run_dir


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, record: dict) -> None:
        if record["step"] == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_is_bit_identical(tiny_llama, tmp_path, records, reference):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_llama, tmp_path, config(**RESUME_CFG), records, callbacks=[CrashAt(5)])
    assert not (tmp_path / "checkpoints" / "step-000006").exists()
    result = train(tiny_llama, tmp_path, config(**RESUME_CFG), records, resume=True)
    assert result.steps == 6
    assert_same(weights(tmp_path / "adapter"), weights(reference / "adapter"))
    assert_same(weights(tmp_path / "checkpoints" / "step-000006"), weights(reference / "checkpoints" / "step-000006"))
    assert (tmp_path / "metrics.jsonl").read_text().count('"step": 5,') == 1  # the lost step is logged once


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_accumulation_then_resume_is_bit_identical(tiny_llama, tmp_path, records, reference, signum):
    model = load_model(tiny_llama)
    calls = []

    def interrupt(module, args, output):  # Ctrl-C during the first micro-batch of step 4
        if module.training:
            calls.append(1)
            if len(calls) == 7:
                signal.raise_signal(signum)

    model.get_input_embeddings().register_forward_hook(interrupt)
    tokenizer = load_tokenizer(tiny_llama)
    cfg = config(**RESUME_CFG)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        run_training(model, tokenizer, get_template("auto", tokenizer), get_method("lora"), cfg.method, *records,
                     cfg, tmp_path, RECIPE, progress=False)
    assert (tmp_path / "checkpoints" / "step-000003-micro-1" / "accum_grads.safetensors").is_file()
    train(tiny_llama, tmp_path, cfg, records, resume=True)
    assert_same(weights(tmp_path / "adapter"), weights(reference / "adapter"))
    assert_same(weights(tmp_path / "checkpoints" / "step-000006"), weights(reference / "checkpoints" / "step-000006"))


def test_resume_refuses_a_changed_recipe_unless_forced(tiny_llama, tmp_path, records):
    cfg = config(max_steps=4)
    with pytest.raises(RuntimeError):
        train(tiny_llama, tmp_path, cfg, records, callbacks=[CrashAt(3)])
    changed = RECIPE.replace("0.01", "0.02")
    with pytest.raises(UserError, match="recipe changed.*learning_rate"):
        train(tiny_llama, tmp_path, cfg, records, recipe=changed, resume=True)
    assert (tmp_path / "recipe.resolved.yaml").read_text() == RECIPE  # the refused one never replaced it
    result = train(tiny_llama, tmp_path, cfg, records, recipe=changed, resume=True, force=True)
    assert result.steps == 4 and (tmp_path / "recipe.resolved.yaml").read_text() == changed


def test_resume_refuses_changed_data_or_threads_naming_the_field(tiny_llama, tmp_path, records):
    """The recipe is the same; what the checkpoint was trained on is not (a re-`prepare`, other threads)."""
    cfg = config(max_steps=4)
    with pytest.raises(RuntimeError):
        train(tiny_llama, tmp_path, cfg, records, callbacks=[CrashAt(3)])
    other_rows = ([chat(1, 1), *records[0][1:]], records[1])
    with pytest.raises(UserError, match="cannot resume: tokens changed"):
        train(tiny_llama, tmp_path, cfg, other_rows, resume=True)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(UserError, match=r"threads changed since the checkpoint \(1 -> 2\)"):
            train(tiny_llama, tmp_path, config(max_steps=4, threads=2), records, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert train(tiny_llama, tmp_path, cfg, other_rows, resume=True, force=True).steps == 4


def test_resuming_a_finished_run_only_rewrites_its_outputs(tiny_llama, tmp_path, records):
    first = train(tiny_llama, tmp_path, config(max_steps=2), records)
    again = train(tiny_llama, tmp_path, config(max_steps=2), records, resume=True)
    assert (again.steps, again.best_val_loss, again.tokens) == (first.steps, first.best_val_loss, first.tokens)
    assert_same(weights(again.artifact), weights(first.artifact))
    assert (tmp_path / "metrics.jsonl").read_text().count('"type": "train"') == 2


def test_fresh_start_refuses_old_checkpoints_unless_forced(tiny_llama, tmp_path, records):
    train(tiny_llama, tmp_path, config(max_steps=2), records)
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(tiny_llama, tmp_path, config(max_steps=2), records)
    assert train(tiny_llama, tmp_path, config(max_steps=2), records, force=True).steps == 2


# ------------------------------------------------------------------------------------ methods, knobs

def test_every_cpu_method_is_covered():
    assert set(METHOD_NAMES) - {"qlora", "distill"} == set(OPTIONS)  # distill: tests/unit/train/test_distill.py


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_method_trains_two_steps(tiny_llama, tmp_path, records, name):
    result = train(tiny_llama, tmp_path, config(method=OPTIONS[name], max_steps=2, eval_every=2), records)
    assert result.steps == 2 and math.isfinite(result.final_val_loss)
    assert saved_method(result.artifact) == name
    assert result.artifact.name == ("model" if name in ("full", "freeze") else "adapter")
    assert result.summary["packing"] == (name not in ("prefix", "prompt"))


def test_neftune_noise_only_while_training(tiny_llama, tmp_path, records):
    plain = train(tiny_llama, tmp_path / "a", config(max_steps=2), records)
    noisy = train(tiny_llama, tmp_path / "b", config(max_steps=2, neftune_alpha=5.0), records)
    assert noisy.base_val_loss == plain.base_val_loss  # validation runs in eval mode: no noise
    assert not torch.equal(weights(noisy.artifact)[next(iter(weights(noisy.artifact)))],
                           weights(plain.artifact)[next(iter(weights(plain.artifact)))])


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_llama, tmp_path, records):
    a = train(tiny_llama, tmp_path / "a", config(max_steps=2), records)
    b = train(tiny_llama, tmp_path / "b", config(max_steps=2, gradient_checkpointing=True), records)
    wa, wb = weights(a.artifact), weights(b.artifact)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=0)
    assert b.summary["memory_estimate"]["activations"] < a.summary["memory_estimate"]["activations"]


def test_layer_groups_report_their_norms(tiny_llama, tmp_path, records):
    groups = [LayerGroupConfig(name="top", layers="top:1", lr_scale=2.0, max_grad_norm=1e-3)]
    train(tiny_llama, tmp_path, config(max_steps=2, layer_groups=groups), records)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert set(line["group_grad_norms"]) == {"top", "default"}


# ---------------------------------------------------------------------------------------- run facts
# (train/summary.py has no test module of its own yet)

def test_flops_per_token_follow_the_4n_and_6n_convention(tiny_llama):
    full = get_method("full").apply(load_model(tiny_llama), FullOptions())
    n = sum(p.numel() for p in full.parameters()) - full.get_input_embeddings().weight.numel()
    assert flops_per_token(full) == 6 * n
    lora = get_method("lora").apply(load_model(tiny_llama), LoraOptions(layers="all", r=4))
    adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert flops_per_token(lora) == 4 * (n + adapter) + 2 * adapter


def test_memory_warning_and_peak_flops_file(tiny_llama, tmp_path):
    model = load_model(tiny_llama)
    estimate = estimate_memory(model, batch_tokens=512, gradient_checkpointing=False)
    assert estimate.total > estimate.params > 0
    assert memory_warning(estimate, estimate.total, "RAM") is None
    assert "batch_tokens" in memory_warning(estimate, estimate.total - 1, "available RAM")
    (tmp_path / "peak_flops.json").write_text(json.dumps({"cpu:x:1t": 2e11}))
    assert peak_flops_for("cpu:x:1t", None, tmp_path)[0] == 2e11
    assert peak_flops_for("cpu:y:1t", None, tmp_path)[0] is None
    assert peak_flops_for("cpu:y:1t", 1e12, tmp_path)[0] == 1e12


def test_weight_hashes_are_cached_by_size_and_mtime(tmp_path):
    weights_file = tmp_path / "model.safetensors"
    weights_file.write_bytes(b"weights")
    real = hashlib.sha256(b"weights").hexdigest()
    assert file_sha256(weights_file, tmp_path / "home") == real
    cache_file = tmp_path / "home" / "sha256-cache.json"
    cache = json.loads(cache_file.read_text())
    cache[str(weights_file.resolve())]["sha256"] = "from-cache"
    cache["/no/such/file"] = {"size": 1, "mtime_ns": 1, "sha256": "x"}
    cache_file.write_text(json.dumps(cache))
    assert file_sha256(weights_file, tmp_path / "home") == "from-cache"  # unchanged file: not re-read
    weights_file.write_bytes(b"new weights")  # another size, so coarse mtimes cannot hide it
    assert file_sha256(weights_file, tmp_path / "home") == hashlib.sha256(b"new weights").hexdigest()
    assert "/no/such/file" not in json.loads(cache_file.read_text())
