"""IA3: default targets per architecture, explicit targets, and the feed-forward check."""

from __future__ import annotations

import json

import pytest

from domaintune.config import IA3Options
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.methods.ia3 import default_targets, ia3_config
from domaintune.models.load import load_model


@pytest.mark.parametrize(("family", "targets"), [
    ("tiny_llama", ["k_proj", "v_proj", "down_proj"]),
    ("tiny_qwen2", ["k_proj", "v_proj", "down_proj"]),
    ("tiny_deepseek_v3", ["kv_b_proj", "down_proj"]),
])
def test_default_targets(family, targets, request):
    assert default_targets(load_model(request.getfixturevalue(family))) == (targets, ["down_proj"])


def test_deepseek_scales_dense_and_shared_down_proj_not_routed_experts(tiny_deepseek_v3):
    model = get_method("ia3").apply(load_model(tiny_deepseek_v3), IA3Options())
    scaled = {n.split(".ia3_l")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
              if "ia3_l" in n}
    assert scaled == {"model.layers.0.self_attn.kv_b_proj", "model.layers.1.self_attn.kv_b_proj",
                      "model.layers.0.mlp.down_proj", "model.layers.1.mlp.shared_experts.down_proj"}


def test_explicit_targets_infer_feedforward(tiny_llama, tmp_path):
    model = get_method("ia3").apply(load_model(tiny_llama), IA3Options(target_modules=["q_proj", "up_proj"]))
    get_method("ia3").save(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "up_proj"]
    assert config["feedforward_modules"] == ["up_proj"]


def test_feedforward_outside_targets_is_a_user_error(tiny_llama):
    with pytest.raises(UserError, match="feedforward_modules \\['down_proj'\\]"):
        ia3_config(load_model(tiny_llama), IA3Options(target_modules=["k_proj"], feedforward_modules=["down_proj"]))
