"""Tests for domaintune.train.stages: general-then-domain training, one model carried through the stages.

Covers: each stage's folder and overrides; the next stage starts from the previous stage's best
weights; the final artifact and summary; a crash in either stage resumes bit-identically, with
finished stages skipped; fresh starts refuse old stage checkpoints unless forced.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from domaintune.config import LoraOptions, StageConfig, TrainConfig
from domaintune.errors import UserError
from domaintune.methods.base import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.callbacks import read_metrics
from domaintune.train.loop import run_training
from domaintune.train.stages import FINAL_WEIGHTS, STAGE_DONE

RECIPE = "train:\n  stages: 2\n"


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def domain() -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    rows = [chat(f"What is {a} plus {b}?", f"The answer is {a + b}.")
            for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(30))]
    return rows[:24], rows[24:]


@pytest.fixture(scope="module")
def general_dir(tmp_path_factory, domain) -> str:
    """Prepared general data; its val split is the domain's, so stage losses compare."""
    folder = tmp_path_factory.mktemp("general_prepared")
    rows = [chat(f"Say hello {k} times", " ".join(["hello"] * k)) for k in range(1, 17)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in domain[1]))
    return str(folder)


def config(general_dir: str, **overrides) -> TrainConfig:
    stages = [StageConfig(data_dir=general_dir, max_steps=3), StageConfig(max_steps=4, learning_rate=5e-3)]
    settings = dict(learning_rate=1e-2, batch_tokens=96, eval_every=2, save_every=2, threads=1, warmup_ratio=0.0,
                    method=LoraOptions(r=4, dropout=0.1), early_stopping_patience=None, keep_checkpoints=5,
                    stages=stages)
    return TrainConfig(**{**settings, **overrides})


def train(model_dir, run_dir, cfg, records, **kwargs):
    tokenizer = load_tokenizer(model_dir)
    return run_training(load_model(model_dir), tokenizer, get_template("auto", tokenizer), get_method("lora"),
                        cfg.method, records[0], records[1], cfg, run_dir, kwargs.pop("recipe", RECIPE),
                        model_path=model_dir, progress=False, **kwargs)


def adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


class CrashAt:
    """Raises at `step` of stage `stage` (stages counted by on_train_start)."""

    def __init__(self, stage: int, step: int) -> None:
        self.stage, self.step, self.seen = stage, step, 0

    def on_train_start(self, info: dict) -> None:
        self.seen += 1

    def on_step(self, record: dict) -> None:
        if (self.seen, record["step"]) == (self.stage, self.step):
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory, domain, general_dir):
    run_dir = tmp_path_factory.mktemp("stages_reference")
    return run_dir, train(tiny_llama, run_dir, config(general_dir), domain)


def test_each_stage_trains_in_its_folder_and_the_model_carries_over(reference, general_dir):
    run_dir, result = reference
    one, two = run_dir / "stage-1", run_dir / "stage-2"
    for folder, steps in ((one, 3), (two, 4)):
        train_lines = [r for r in read_metrics(folder / "metrics.jsonl") if r["type"] == "train"]
        assert [r["step"] for r in train_lines] == list(range(1, steps + 1))
        assert (folder / "summary.json").is_file() and (folder / "adapter").is_dir()
    assert read_metrics(two / "metrics.jsonl")[1]["lr"] == pytest.approx(5e-3)  # the stage's own LR
    lineage = json.loads((one / "summary.json").read_text())["lineage"]["train_data"]
    assert str(general_dir) in json.dumps(lineage)  # stage 1 read its own data_dir
    # stage 2 starts from stage 1's best weights: its first validation is stage 1's best loss
    assert result.stages[1]["base_val_loss"] == pytest.approx(result.stages[0]["best_val_loss"], abs=1e-6)
    assert result.stages[1]["base_val_loss"] != result.stages[0]["base_val_loss"]  # stage 1 did change the model
    assert (one / STAGE_DONE).is_file() and (one / FINAL_WEIGHTS).is_file() and not (two / STAGE_DONE).exists()


def test_the_final_artifact_and_summary_are_the_last_stage_best(reference):
    run_dir, result = reference
    assert result.run_dir == run_dir and result.artifact == run_dir / "adapter"
    assert_same(adapter(run_dir), adapter(run_dir / "stage-2"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == [1, 2] and summary == result.summary
    assert summary["steps"] == result.steps == 4 and result.best_val_loss == result.stages[1]["best_val_loss"]
    assert (run_dir / "recipe.resolved.yaml").read_text() == RECIPE


@pytest.mark.parametrize("stage,step", [(1, 2), (2, 1), (2, 3)])  # (2, 1): before stage 2 saved anything
def test_a_crash_in_either_stage_resumes_bit_identically(tiny_llama, tmp_path, domain, general_dir, reference,
                                                         stage, step):
    cfg = config(general_dir)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_llama, tmp_path, cfg, domain, callbacks=[CrashAt(stage, step)])
    starts = CrashAt(0, 0)
    result = train(tiny_llama, tmp_path, cfg, domain, resume=True, callbacks=[starts])
    assert starts.seen == (2 if stage == 1 else 1)  # a finished stage is skipped
    ref_dir, ref = reference
    assert_same(adapter(tmp_path), adapter(ref_dir))
    assert_same(adapter(tmp_path / "stage-1"), adapter(ref_dir / "stage-1"))
    assert [s["best_val_loss"] for s in result.stages] == [s["best_val_loss"] for s in ref.stages]


def test_resume_checks_the_recipe_of_a_finished_stage(tiny_llama, tmp_path, domain, general_dir):
    cfg = config(general_dir)
    with pytest.raises(RuntimeError):
        train(tiny_llama, tmp_path, cfg, domain, callbacks=[CrashAt(2, 1)])
    with pytest.raises(UserError, match="recipe changed"):
        train(tiny_llama, tmp_path, cfg, domain, resume=True, recipe=RECIPE.replace("2", "3"))


def test_fresh_start_refuses_old_stage_checkpoints_unless_forced(tiny_llama, tmp_path, domain, general_dir):
    cfg = config(general_dir, stages=[StageConfig(data_dir=general_dir, max_steps=1), StageConfig(max_steps=1)])
    train(tiny_llama, tmp_path, cfg, domain)
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(tiny_llama, tmp_path, cfg, domain)
    starts = CrashAt(0, 0)
    assert train(tiny_llama, tmp_path, cfg, domain, force=True, callbacks=[starts]).steps == 1
    assert starts.seen == 2  # forced: every stage trains again
