"""Tests for train/frozen.py: caching the frozen layers changes the speed, not the training."""

from __future__ import annotations

import random

import pytest
import torch

from domaintune.config import FreezeOptions, LoraOptions, TrainConfig
from domaintune.methods.base import get_method
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.models.batch import collate_packed, encode_record
from domaintune.train.frozen import BuildTooSlow, FrozenPrefix, first_trained_layer
from domaintune.train.loop import run_training
from domaintune.models.loss import causal_lm_loss


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}


@pytest.fixture(scope="module")
def records():
    rng = random.Random(0)
    rows = [chat(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(24)]
    return rows[:20], rows[20:]


def lora(model_dir, layers):
    model = load_model(model_dir)
    return get_method("lora").apply(model, LoraOptions(r=4, dropout=0.0, layers=layers))


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"])
def test_cached_states_give_the_plain_loss_and_gradients(family, records, request):
    model_dir = request.getfixturevalue(family)
    tokenizer = load_tokenizer(model_dir)
    model = lora(model_dir, "top:1")
    examples = [encode_record(r, tokenizer, get_template("chatml"), 256).example for r in records[0]]
    prefix = FrozenPrefix.build(model, examples, batch_tokens=128)
    assert prefix is not None and prefix.cut == 1 and len(prefix.states) == len(examples)
    rows = [0, 3, 5]
    batch = collate_packed([examples[i] for i in rows])
    model.zero_grad()
    plain, _ = causal_lm_loss(model, batch)
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with prefix.top_only():
        cached, _ = causal_lm_loss(model, prefix.attach(batch, rows))
        cached.backward()
    assert len(prefix.layers) == 2  # the full list is back after the block
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_no_cache_where_the_bottom_trains(tiny_llama, records):
    assert first_trained_layer(lora(tiny_llama, "all")) == 0
    assert FrozenPrefix.build(lora(tiny_llama, "all"), [], batch_tokens=64) is None
    full = get_method("full").apply(load_model(tiny_llama), None)
    assert first_trained_layer(full) is None  # the embeddings train
    assert FrozenPrefix.build(lora(tiny_llama, "top:1"), [], batch_tokens=64, neftune=True) is None


def _run(model_dir, run_dir, records, cache):
    tokenizer = load_tokenizer(model_dir)
    cfg = TrainConfig(max_steps=4, learning_rate=1e-2, batch_tokens=128, eval_every=2, threads=1,
                      warmup_ratio=0.0, method=FreezeOptions(train_top=1), cache_frozen=cache)
    return run_training(load_model(model_dir), tokenizer, get_template("chatml"), get_method("freeze"), cfg.method,
                        records[0], records[1], cfg, run_dir, "train: {}\n", model_path=model_dir, progress=False)


def _used_cache(run_dir) -> bool:
    import json

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return json.loads((last / "state.json").read_text())["extra"]["frozen_cache"]


def test_a_run_with_the_cache_trains_like_one_without(tiny_llama, records, tmp_path):
    cached, plain = _run(tiny_llama, tmp_path / "a", records, True), _run(tiny_llama, tmp_path / "b", records, False)
    assert _used_cache(tmp_path / "a") and not _used_cache(tmp_path / "b")
    assert cached.best_val_loss == pytest.approx(plain.best_val_loss, rel=1e-4)


class _CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, record: dict) -> None:
        if record["step"] == self.step:
            raise RuntimeError("simulated crash")


def test_resume_with_the_cache_is_bit_identical(tiny_llama, records, tmp_path):
    from safetensors.torch import load_file

    def run(folder, **kwargs):
        tokenizer = load_tokenizer(tiny_llama)
        cfg = TrainConfig(max_steps=6, learning_rate=1e-2, batch_tokens=128, grad_accum=2, eval_every=3, save_every=2,
                          threads=1, method=LoraOptions(r=4, dropout=0.1, layers="top:1"))
        return run_training(load_model(tiny_llama), tokenizer, get_template("chatml"), get_method("lora"),
                            cfg.method, records[0], records[1], cfg, folder, "train: {}\n", model_path=tiny_llama,
                            progress=False, **kwargs)

    run(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", callbacks=[_CrashAt(5)])
    run(tmp_path / "resumed", resume=True)
    assert _used_cache(tmp_path / "straight") and _used_cache(tmp_path / "resumed")
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_that_sees_its_examples_about_once_goes_without(tiny_llama, records, tmp_path):
    tokenizer = load_tokenizer(tiny_llama)
    cfg = TrainConfig(max_steps=1, learning_rate=1e-2, batch_tokens=64, threads=1, method=FreezeOptions(train_top=1))
    run_training(load_model(tiny_llama), tokenizer, get_template("chatml"), get_method("freeze"), cfg.method,
                 records[0], records[1], cfg, tmp_path, "train: {}\n", model_path=tiny_llama, progress=False)
    assert not _used_cache(tmp_path)  # building it would cost a pass over all 20 examples for a few of them


def _budget_run(model_dir, records, folder):
    tokenizer = load_tokenizer(model_dir)
    cfg = TrainConfig(max_steps=4, learning_rate=1e-2, batch_tokens=128, threads=1, time_budget="10m",
                      method=FreezeOptions(train_top=1))
    return run_training(load_model(model_dir), tokenizer, get_template("chatml"), get_method("freeze"), cfg.method,
                        records[0], records[1], cfg, folder, "train: {}\n", model_path=model_dir, progress=False)


def test_under_a_time_budget_the_cache_is_built_when_it_leaves_more_steps(tiny_llama, records, tmp_path,
                                                                          monkeypatch):
    caps = []
    monkeypatch.setattr("domaintune.train.run.cache_build_cap",
                        lambda budget, cut, n_layers: caps.append((budget, cut, n_layers)) or 60.0)
    _budget_run(tiny_llama, records, tmp_path / "fits")
    assert _used_cache(tmp_path / "fits")  # milliseconds of a one-minute cap
    assert caps == [(600.0, 1, 2)]  # the budget, the first trained layer, the layers
    monkeypatch.setattr("domaintune.train.run.cache_build_cap", lambda budget, cut, n_layers: 0.0)
    _budget_run(tiny_llama, records, tmp_path / "over")
    assert not _used_cache(tmp_path / "over")  # projected beyond its share: given up, training goes on


def test_a_build_projected_past_its_cap_is_given_up(tiny_llama, records):
    tokenizer = load_tokenizer(tiny_llama)
    model = get_method("freeze").apply(load_model(tiny_llama), FreezeOptions(train_top=1))
    examples = [encode_record(r, tokenizer, get_template("chatml"), 128).example for r in records[0]]
    with pytest.raises(BuildTooSlow):
        FrozenPrefix.build(model, examples, 64, max_seconds=0.0)
    assert FrozenPrefix.build(model, examples, 64, max_seconds=60.0) is not None