"""Tests for domaintune.train.run through `run_training`: EWC in a real run, its resume, the loss hook, facts.

Covers: the EWC penalty is zero at the first step and grows; a large EWC weight keeps the weights
measurably closer to the anchor; Fisher and anchor survive a crash and a Ctrl-C mid-accumulation
so the resumed run is bit-identical; `loss_fn` trains while validation keeps the plain loss;
replay, curriculum and term facts land in summary.json.
"""

from __future__ import annotations

import json
import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from domaintune.config import CurriculumConfig, EwcConfig, LoraOptions, ReplayConfig, TrainConfig
from domaintune.methods.base import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.callbacks import read_metrics
from domaintune.train.forgetting import EWC_FILE, Ewc
from domaintune.train.loop import run_training
from domaintune.models.loss import causal_lm_loss

RECIPE = "train:\n  ewc: on\n"


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}],
            "metadata": {"difficulty": "easy" if a + b < 10 else "hard"}}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def records() -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    rows = [chat(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(40)]
    return rows[:32], rows[32:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    rows = [{"messages": [{"role": "user", "content": f"Tell me about topic {i}."},
                          {"role": "assistant", "content": f"Topic {i} is about machine learning."}]} for i in range(8)]
    return write_jsonl(tmp_path_factory.mktemp("ref") / "reference.jsonl", rows)


def config(**overrides) -> TrainConfig:
    settings = dict(max_steps=6, learning_rate=1e-2, batch_tokens=128, eval_every=3, save_every=2, threads=1,
                    warmup_ratio=0.0, method=LoraOptions(r=4, dropout=0.0), early_stopping_patience=None)
    return TrainConfig(**{**settings, **overrides})


def train(model_dir, run_dir, cfg, records, **kwargs):
    tokenizer = load_tokenizer(model_dir)
    return run_training(load_model(model_dir), tokenizer, get_template("auto", tokenizer), get_method("lora"),
                        cfg.method, records[0], records[1], cfg, run_dir, RECIPE, model_path=model_dir,
                        progress=False, **kwargs)


def last_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------------------------------------- EWC

def fisher_distance(run_dir, ewc_file) -> float:
    """sum F * (theta - anchor)^2 of the run's last weights, with one run's Fisher and anchor."""
    ewc = Ewc.load(ewc_file, 2.0, None)
    return ewc.penalty(last_weights(run_dir)).item()


def test_ewc_penalty_starts_at_zero_and_holds_weights_near_the_anchor(tiny_llama, tmp_path, records, reference):
    free = train(tiny_llama, tmp_path / "free", config(), records)
    held = train(tiny_llama, tmp_path / "held", config(ewc=EwcConfig(reference=reference, weight=1e4)), records)
    lines = [r for r in read_metrics(tmp_path / "held" / "metrics.jsonl") if r["type"] == "train"]
    penalties = [r["ewc_penalty"] for r in lines]
    assert penalties[0] == 0.0 and penalties[-1] > 0  # the weights start at the anchor
    assert "ewc_penalty" not in read_metrics(tmp_path / "free" / "metrics.jsonl")[1]
    ewc_file = tmp_path / "held" / EWC_FILE
    anchor = Ewc.load(ewc_file, 1.0, None).anchor
    # the anchor is the start: LoRA B is zero there
    assert all(float(t.abs().sum()) == 0 for n, t in anchor.items() if "lora_B" in n)
    assert fisher_distance(tmp_path / "held", ewc_file) < 0.5 * fisher_distance(tmp_path / "free", ewc_file)
    moved = {n: float((t - anchor[n]).norm()) for n, t in last_weights(tmp_path / "held").items() if "lora_B" in n}
    moved_free = {n: float((t - anchor[n]).norm()) for n, t in last_weights(tmp_path / "free").items() if "lora_B" in n}
    assert sum(moved.values()) < sum(moved_free.values())
    assert held.summary["ewc"]["samples"] == 8 and free.summary.get("ewc") is None


EWC_RESUME = dict(max_steps=6, grad_accum=2, batch_tokens=64, save_every=2, eval_every=2, keep_checkpoints=5,
                  method=LoraOptions(r=4, dropout=0.1), neftune_alpha=5.0)


@pytest.fixture(scope="module")
def ewc_reference_run(tiny_llama, tmp_path_factory, records, reference):
    run_dir = tmp_path_factory.mktemp("ewc_reference")
    train(tiny_llama, run_dir, config(**EWC_RESUME, ewc=EwcConfig(reference=reference, weight=100.0)), records)
    return run_dir


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, record: dict) -> None:
        if record["step"] == self.step:
            raise RuntimeError("simulated crash")


def test_resume_with_ewc_after_a_crash_is_bit_identical(tiny_llama, tmp_path, records, reference, ewc_reference_run):
    cfg = config(**EWC_RESUME, ewc=EwcConfig(reference=reference, weight=100.0))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_llama, tmp_path, cfg, records, callbacks=[CrashAt(5)])
    state = json.loads((tmp_path / "checkpoints" / "step-000004" / "state.json").read_text())
    assert len(state["extra"]["ewc_sha256"]) == 64  # the checkpoint pins the Fisher/anchor file
    train(tiny_llama, tmp_path, cfg, records, resume=True)
    assert_same(last_weights(tmp_path), last_weights(ewc_reference_run))
    assert_same(load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")),
                load_file(str(ewc_reference_run / "adapter" / "adapter_model.safetensors")))
    assert [r.get("ewc_penalty") for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        r.get("ewc_penalty") for r in read_metrics(ewc_reference_run / "metrics.jsonl")]


def test_ctrl_c_mid_accumulation_with_ewc_then_resume_is_bit_identical(tiny_llama, tmp_path, records, reference,
                                                                        ewc_reference_run):
    cfg = config(**EWC_RESUME, ewc=EwcConfig(reference=reference, weight=100.0))
    model, calls = load_model(tiny_llama), []

    def interrupt(module, args, output):  # Ctrl-C during the first micro-batch of step 4
        if module.training:
            calls.append(1)
            if len(calls) == 7:
                signal.raise_signal(signal.SIGINT)

    model.get_input_embeddings().register_forward_hook(interrupt)
    tokenizer = load_tokenizer(tiny_llama)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        run_training(model, tokenizer, get_template("auto", tokenizer), get_method("lora"), cfg.method, *records,
                     cfg, tmp_path, RECIPE, progress=False)
    assert (tmp_path / "checkpoints" / "step-000003-micro-1" / "accum_grads.safetensors").is_file()
    train(tiny_llama, tmp_path, cfg, records, resume=True)
    assert_same(last_weights(tmp_path), last_weights(ewc_reference_run))


def test_resume_refuses_a_changed_ewc_file(tiny_llama, tmp_path, records, reference):
    cfg = config(max_steps=4, ewc=EwcConfig(reference=reference))
    with pytest.raises(RuntimeError):
        train(tiny_llama, tmp_path, cfg, records, callbacks=[CrashAt(3)])
    Ewc({"x": torch.zeros(1)}, {"x": torch.zeros(1)}, 1.0).save(tmp_path / EWC_FILE)
    with pytest.raises(Exception, match="missing or changed"):
        train(tiny_llama, tmp_path, cfg, records, resume=True)


# -------------------------------------------------------------------------------- loss hook, facts

def test_loss_fn_trains_and_validation_stays_plain(tiny_llama, tmp_path, records):
    seen = []

    def scaled(model, batch):
        seen.append(model.training)
        loss, n = causal_lm_loss(model, batch)
        return 0.0 * loss, n  # no gradient: the weights must not move

    plain = train(tiny_llama, tmp_path / "a", config(max_steps=2, eval_every=2), records)
    hooked = train(tiny_llama, tmp_path / "b", config(max_steps=2, eval_every=2), records, loss_fn=scaled)
    assert seen and all(seen)  # called for training only
    assert hooked.best_val_loss == pytest.approx(hooked.base_val_loss, abs=1e-6) == plain.base_val_loss
    assert plain.best_val_loss < plain.base_val_loss
    lines = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["type"] == "train"]
    assert all(r["loss"] == 0.0 for r in lines)


def test_replay_curriculum_and_terms_are_counted_in_summary(tiny_llama, tmp_path, records, reference):
    terms = tmp_path / "terms.csv"
    terms.write_text("answer\n", encoding="utf-8")
    cfg = config(max_steps=2, replay=ReplayConfig(data=reference, ratio=0.25), terms=str(terms), term_weight=3.0,
                 curriculum=CurriculumConfig(by="metadata.difficulty", order=["easy", "hard"]))
    result = train(tiny_llama, tmp_path / "run", cfg, records)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replay"]["records"] == 8 == summary["replay"]["examples"]
    assert summary["train"]["examples"] == 32 + 8 and summary["train"]["records"] == 32
    assert sum(summary["curriculum"]["buckets"].values()) == 40 and summary["curriculum"]["missing_field"] == 8
    assert summary["terms"]["weighted_tokens"] >= 32 and result.summary == summary
