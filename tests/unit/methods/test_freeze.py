"""Freeze tuning: exactly the intended layers train; tied heads stay frozen; bad counts are user errors."""

from __future__ import annotations

import logging

import pytest
from safetensors import safe_open

from domaintune.config import FreezeOptions
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.models.load import load_model


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _layer_params(model, index: int) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(f"model.layers.{index}.")}


@pytest.mark.parametrize("opts", [FreezeOptions(freeze_first=1), FreezeOptions(train_top=1)])
def test_top_layer_norm_and_head_train(opts, tiny_llama):
    model = get_method("freeze").apply(load_model(tiny_llama), opts)
    assert _trainable(model) == _layer_params(model, 1) | {"model.norm.weight", "lm_head.weight"}


def test_train_top_all_layers_keeps_embeddings_frozen(tiny_llama):
    model = get_method("freeze").apply(load_model(tiny_llama), FreezeOptions(train_top=2, train_head=False))
    assert _trainable(model) == _layer_params(model, 0) | _layer_params(model, 1)


def test_freeze_all_layers_trains_only_the_head(tiny_llama):
    model = get_method("freeze").apply(load_model(tiny_llama), FreezeOptions(freeze_first=2))
    assert _trainable(model) == {"model.norm.weight", "lm_head.weight"}


def test_moe_layer_trains_experts_and_router(tiny_deepseek_v3):
    model = get_method("freeze").apply(load_model(tiny_deepseek_v3), FreezeOptions(train_top=1, train_head=False))
    trainable = _trainable(model)
    assert trainable == _layer_params(model, 1)
    assert {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.gate.weight"} <= trainable


def test_tied_head_stays_frozen_and_says_so(tiny_qwen2, caplog):
    with caplog.at_level(logging.WARNING, logger="domaintune.methods.freeze"):
        model = get_method("freeze").apply(load_model(tiny_qwen2), FreezeOptions(freeze_first=1))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.model.embed_tokens.weight.requires_grad
    assert _trainable(model) == _layer_params(model, 1) | {"model.norm.weight"}
    assert "tied" in caplog.text


@pytest.mark.parametrize(("opts", "message"), [
    (FreezeOptions(freeze_first=3), "freeze_first"),
    (FreezeOptions(train_top=3), "train_top"),
    (FreezeOptions(freeze_first=2, train_head=False), "nothing to train"),
])
def test_impossible_counts_are_user_errors(opts, message, tiny_llama):
    with pytest.raises(UserError, match=message):
        get_method("freeze").apply(load_model(tiny_llama), opts)


def test_save_writes_only_the_trained_tensors(tiny_llama, tmp_path):
    model = get_method("freeze").apply(load_model(tiny_llama), FreezeOptions(train_top=1))
    get_method("freeze").save(model, tmp_path)
    with safe_open(str(tmp_path / "weights.safetensors"), "pt") as saved:
        assert set(saved.keys()) == _trainable(model)


def test_load_refuses_weights_of_another_model(tiny_llama, tiny_qwen2, tmp_path):
    # Same hidden size and names: only the recorded base fingerprint tells them apart.
    model = get_method("freeze").apply(load_model(tiny_llama), FreezeOptions(train_top=1))
    get_method("freeze").save(model, tmp_path)
    with pytest.raises(UserError, match="another base model .model_type llama != qwen2"):
        get_method("freeze").load(load_model(tiny_qwen2), tmp_path)
