"""Tests for methods/distill.py: the student is a LoRA or full model, and every call hands over to that method."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from domaintune.config import DistillOptions
from domaintune.methods.base import REGISTRY, get_method, saved_method, trainable_report
from domaintune.methods.distill import student_method
from domaintune.models.load import load_model


@pytest.fixture
def distill():
    return get_method("distill")


def batch(model) -> torch.Tensor:
    return torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_step(model, ids: torch.Tensor) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_distill_is_registered_under_its_name(distill):
    assert distill.name == "distill" and REGISTRY["distill"] is distill


def test_student_options_come_from_the_distill_options():
    method, opts = student_method(DistillOptions(teacher="t", r=8, alpha=16, dropout=0.1))
    assert method.name == "lora"
    assert (opts.r, opts.alpha, opts.dropout, opts.target_modules) == (8, 16, 0.1, "all-linear")
    assert student_method(DistillOptions(teacher="t", target_modules=["q_proj"]))[1].target_modules == ["q_proj"]
    assert student_method(DistillOptions(teacher="t", student="full"))[0].name == "full"


def test_a_lora_student_is_a_peft_lora_model_that_saves_as_lora(distill, tiny_llama, tmp_path):
    opts = DistillOptions(teacher="t", student="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = distill.apply(load_model(tiny_llama), opts)
    assert isinstance(model, PeftModel)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"q_proj", "v_proj"})
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    ids = batch(model)
    train_step(model, ids)
    distill.save(model, tmp_path)
    assert saved_method(tmp_path) == "lora"  # a plain LoRA adapter: export and serve load it as such
    loaded = distill.load(load_model(tiny_llama), tmp_path)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))
    expected = logits(model, ids)
    torch.testing.assert_close(logits(distill.merge(model), ids), expected, atol=1e-5, rtol=1e-5)


def test_a_full_student_trains_everything_and_saves_as_full(distill, tiny_qwen2, tmp_path):
    model = distill.apply(load_model(tiny_qwen2), DistillOptions(teacher="t", student="full"))
    report = trainable_report(model)
    assert report.trainable == report.total > 0
    ids = batch(model)
    train_step(model, ids)
    distill.save(model, tmp_path)
    assert saved_method(tmp_path) == "full"
    loaded = distill.load(load_model(tiny_qwen2), tmp_path)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))
    assert distill.merge(model) is model
