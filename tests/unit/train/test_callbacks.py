"""Tests for domaintune.train.callbacks: metrics.jsonl schema and resume, loss.png, the progress bar."""

from __future__ import annotations

import json
import math

import pytest

from domaintune.config import LoraOptions, TrainConfig
from domaintune.methods import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.callbacks import (TRAIN_FIELDS, VAL_FIELDS, MetricsLog, ProgressBar, notify, plot_losses,
                                        read_metrics)
from domaintune.train.loop import run_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Add {a} and {b}."},
                         {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    """A 4-step LoRA run with grad accumulation 2 and validation every 2 steps."""
    out = tmp_path_factory.mktemp("run")
    rows = [chat(a, b) for a in range(1, 6) for b in range(1, 6)]
    cfg = TrainConfig(max_steps=4, grad_accum=2, batch_tokens=96, eval_every=2, save_every=10, threads=1,
                      learning_rate=1e-2, method=LoraOptions(r=4))
    tokenizer = load_tokenizer(tiny_llama)
    run_training(load_model(tiny_llama), tokenizer, get_template("auto", tokenizer), get_method("lora"), cfg.method,
                 rows[:20], rows[20:], cfg, out, "train: {}\n", progress=False)
    return out


def test_metrics_lines_follow_the_schema(run_dir):
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    val = [r for r in records if r["type"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in val] == [0, 2, 4]
    for r in train:
        assert set(TRAIN_FIELDS) <= set(r)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("loss", "lr", "grad_norm", "tokens_per_s"))
        assert isinstance(r["tokens"], int) and 0 < r["supervised_tokens"] < r["tokens"] <= 2 * 96
        assert 0 < r["epoch"] and r["elapsed_s"] > 0
    assert [r["epoch"] for r in train] == sorted(r["epoch"] for r in train)
    for r in val:
        assert set(VAL_FIELDS) == set(r) and isinstance(r["best"], bool) and r["val_loss"] > 0
    assert not val[0]["best"]  # the base model's loss is a reference, not a candidate
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["tokens"] == sum(r["tokens"] for r in train)


def test_loss_png_is_written_and_non_empty(run_dir, tmp_path):
    png = run_dir / "loss.png"
    assert png.stat().st_size > 5_000 and png.read_bytes()[:8] == PNG_MAGIC
    out = plot_losses(run_dir / "metrics.jsonl", tmp_path / "again.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert plot_losses(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_metrics_log_drops_lines_past_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"type": "val", "step": 0, "val_loss": 3.0, "best": False}] + [
        {"type": "train", "step": s, "loss": 1.0} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"type": "tra')  # torn last line
    log = MetricsLog(tmp_path)
    notify([log], "on_train_start", {"step": 3, "total_steps": 6})
    notify([log], "on_step", {"type": "train", "step": 4, "loss": 0.5})
    notify([log], "on_close")
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]
    assert read_metrics(path)[-1]["loss"] == 0.5


def test_fresh_start_truncates_old_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 9.0}\n')
    log = MetricsLog(tmp_path)
    log.on_train_start({"step": 0, "total_steps": 2})
    log.on_close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_progress_bar_stays_off_without_a_terminal():
    bar = ProgressBar(enabled=True)  # pytest captures stderr, so it is not a terminal
    bar.on_train_start({"total_steps": 3, "step": 0})
    bar.on_step({"step": 1, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 10.0})
    bar.on_close()
    assert bar._progress is None


def test_notify_skips_callbacks_without_the_event():
    seen = []

    class OnlyEval:
        def on_eval(self, record):
            seen.append(record["step"])

    notify([object(), OnlyEval()], "on_eval", {"step": 7})
    notify([OnlyEval()], "on_step", {"step": 8})
    assert seen == [7]
