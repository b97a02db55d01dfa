"""Tests for train/plan.py and train/selection.py through `run_training`: epochs auto, the time
budget, and checkpoint selection / early stopping by a task metric."""

from __future__ import annotations

import random
import time

import pytest

from domaintune.config import LoraOptions, TrainConfig
from domaintune.methods.base import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.callbacks import read_metrics
from domaintune.train.loop import run_training
from domaintune.models.loss import causal_lm_loss
from domaintune.train.plan import AUTO_EXAMPLES, AUTO_MAX_EPOCHS, auto_epochs, steps_within_budget
from domaintune.train.selection import Selector, resolve_select_by


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}


@pytest.fixture(scope="module")
def records():
    rng = random.Random(0)
    rows = [chat(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(40)]
    return rows[:32], rows[32:]


def config(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, batch_tokens=64, save_every=1000, threads=1, warmup_ratio=0.0,
                    method=LoraOptions(r=4, dropout=0.0), early_stopping_patience=None)
    return TrainConfig(**{**settings, **overrides})


def train(model_dir, run_dir, cfg, records, **kwargs):
    tokenizer = load_tokenizer(model_dir)
    return run_training(load_model(model_dir), tokenizer, get_template("auto", tokenizer), get_method("lora"),
                        cfg.method, records[0], records[1], cfg, run_dir, "train: {}\n", model_path=model_dir,
                        progress=False, **kwargs)


def test_auto_epochs_many_passes_for_small_sets_one_for_large():
    sizes = [1, 50, 500, 1000, 3000, AUTO_EXAMPLES, 50_000, 10**6]
    epochs = [auto_epochs(n) for n in sizes]
    assert epochs == sorted(epochs, reverse=True)
    assert epochs[0] == AUTO_MAX_EPOCHS and epochs[-1] == epochs[-3] == 1.0
    assert auto_epochs(3000) == pytest.approx(AUTO_EXAMPLES / 3000, abs=0.01)


def test_epochs_auto_sets_the_planned_steps(tiny_llama, records, tmp_path, capsys):
    result = train(tiny_llama, tmp_path / "run", config(eval_every=1000), records)
    one = train(tiny_llama, tmp_path / "one", config(epochs=1, eval_every=1000), records)
    assert result.summary["epochs"] == pytest.approx(auto_epochs(32), rel=0.05)
    assert (one.steps - 1) * auto_epochs(32) <= result.steps <= one.steps * auto_epochs(32)


def test_budget_fitting_arithmetic():
    # 100 s budget, 10 s spent, 5 s/step, validations of 4 s every 10 steps:
    # 16 more steps (80 s) and the validations at step 10 and at the last step, 18 (8 s): 88 of 90 s
    assert steps_within_budget(100, 10, 2, 5.0, 4.0, 10, 400) == 18
    # the last validation is counted once: 9 steps (90 s) and the one validation (10 s) fill 100 s
    assert steps_within_budget(100, 0, 0, 10.0, 10.0, 400, 400) == 9
    assert steps_within_budget(100, 10, 2, 5.0, 0.0, 10, 8) == 8      # never more than planned
    assert steps_within_budget(10, 50, 2, 5.0, 0.0, 10, 400) == 3     # over budget: one more step


def test_time_budget_shortens_the_schedule_and_the_lr_still_decays(tiny_llama, records, tmp_path):
    def slow_loss(model, batch):
        time.sleep(0.05)
        return causal_lm_loss(model, batch)

    cfg = config(epochs=40, time_budget=1.5, eval_every=1000, scheduler="linear")
    result = train(tiny_llama, tmp_path / "run", cfg, records, loss_fn=slow_loss)
    assert result.summary["total_steps"] < 200 and result.steps <= result.summary["total_steps"]
    assert result.summary["seconds"] < 1.5 + 1.0
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert lrs[-1] < 0.25 * lrs[0]  # the fitted schedule decayed toward its end


def test_slow_validations_under_a_budget_mean_fewer_validations_not_fewer_steps(tiny_llama, records, tmp_path):
    def slow_metric(model):
        time.sleep(0.6)  # a validation costing far more than a step (the demo: decoded prompts with retrieval)
        return {"accuracy": 50.0, "exact_match": 50.0}

    cfg = config(epochs=40, time_budget=4.0, eval_every="auto", scheduler="linear")
    result = train(tiny_llama, tmp_path / "run", cfg, records, select_by="accuracy", task_metric=slow_metric)
    vals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "val"]
    # 6 validations of 0.6 s would take most of the budget and leave a handful of steps; the fit keeps
    # validations to a share of what is left (run.BUDGET_VALIDATION_SHARE), so most of the budget trains
    assert len(vals) <= 3 and result.steps >= 20


def test_selection_by_task_metric_keeps_the_best_step_and_stops_early(tiny_llama, records, tmp_path):
    scores = iter([10.0, 40.0, 70.0, 60.0, 55.0, 50.0, 45.0, 40.0])
    seen = []

    def metric(model):
        assert not model.training  # decoded in eval mode
        value = next(scores)
        seen.append(value)
        return {"accuracy": value, "exact_match": value}

    cfg = config(max_steps=20, eval_every=2, early_stopping_patience=2)
    result = train(tiny_llama, tmp_path / "run", cfg, records, select_by="accuracy", task_metric=metric)
    assert seen == [10.0, 40.0, 70.0, 60.0, 55.0]       # base, then steps 2, 4, 6, 8: two drops end it
    assert result.stop_reason == "early_stopping" and result.steps == 8 and result.best_step == 4
    assert result.summary["select_by"] == "accuracy" and result.summary["best_metric"] == 70.0
    assert result.summary["base_metric"] == 10.0 and result.best_val_loss is not None
    vals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "val"]
    assert [r["val_accuracy"] for r in vals] == seen and [r["best"] for r in vals] == [False, True, True, False, False]


def test_selector_directions_and_auto():
    assert Selector("loss").better(0.5, 0.6) and not Selector("loss").better(0.7, 0.6)
    assert Selector("macro_f1").better(0.7, 0.6) and Selector("chrf").better(1.0, None)
    assert resolve_select_by("auto", closed_set=True) == "accuracy"
    assert resolve_select_by("auto", closed_set=False) == "loss" == resolve_select_by("loss", True)


def test_budget_durations_in_the_recipe():
    assert TrainConfig(time_budget="15m").time_budget == 900 and TrainConfig(time_budget=30).time_budget == 30
    with pytest.raises(ValueError, match="duration"):
        TrainConfig(time_budget="soon")
