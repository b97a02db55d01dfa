"""Prefix tuning: works on LLaMA-style caches, refused with a reason on DeepSeek-V3's MLA cache."""

from __future__ import annotations

import json

import pytest
import torch

from domaintune.config import PrefixOptions
from domaintune.errors import UserError
from domaintune.methods import get_method, trainable_report
from domaintune.models.load import load_model


def test_mla_models_are_refused_with_the_reason(tiny_deepseek_v3):
    with pytest.raises(UserError) as err:
        get_method("prefix").apply(load_model(tiny_deepseek_v3), PrefixOptions())
    text = str(err.value)
    assert "deepseek_v3" in text and "compressed latent (16 wide)" in text and "rotary key (8 wide)" in text
    assert "use method: prompt or method: lora" in text


def test_projection_adds_an_mlp_and_saves_in_peft_format(tiny_llama, tmp_path):
    plain = get_method("prefix").apply(load_model(tiny_llama), PrefixOptions(num_virtual_tokens=4))
    projected = get_method("prefix").apply(load_model(tiny_llama),
                                           PrefixOptions(num_virtual_tokens=4, prefix_projection=True))
    # no projection: one key and one value vector per layer and virtual token (2 layers, 2 KV heads x 8 dims)
    assert trainable_report(plain).trainable == 4 * 2 * 2 * 16
    assert trainable_report(projected).trainable > trainable_report(plain).trainable
    ids = torch.arange(3, 11).unsqueeze(0)
    assert projected(input_ids=ids, labels=ids).loss.isfinite()
    get_method("prefix").save(projected, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is True
