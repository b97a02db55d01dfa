"""LoRA: target resolution per architecture, the PEFT folder format, rsLoRA/DoRA switches."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from domaintune.config import LoraOptions
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.methods.lora import resolve_targets
from domaintune.models.load import load_model

DENSE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLA = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]


def _adapted(model) -> set[str]:
    return {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
            if ".lora_A" in n}


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _nudge(model):
    """Give LoRA B non-zero values, so a load or merge that dropped it would show."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                param.add_(0.05 * torch.randn_like(param))


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2"])
def test_saved_folder_loads_with_plain_peft(family, request, tmp_path):
    path = request.getfixturevalue(family)
    torch.manual_seed(0)
    model = get_method("lora").apply(load_model(path), LoraOptions(layers="all", r=4))
    _nudge(model)
    get_method("lora").save(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(DENSE)
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert (tmp_path / "adapter_model.safetensors").is_file()
    ids = torch.arange(3, 19).unsqueeze(0)
    loaded = PeftModel.from_pretrained(load_model(path), str(tmp_path))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-6, rtol=0)


def test_deepseek_adapts_mla_dense_and_shared_experts_never_router_or_routed(tiny_deepseek_v3):
    model = get_method("lora").apply(load_model(tiny_deepseek_v3), LoraOptions(layers="all", r=4))
    adapted = _adapted(model)
    # layer 0 is dense, layer 1 is MoE (conftest: first_k_dense_replace=1)
    expected = {f"model.layers.{i}.self_attn.{n}" for i in (0, 1) for n in MLA}
    expected |= {f"model.layers.0.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")}
    expected |= {f"model.layers.1.mlp.shared_experts.{n}" for n in ("gate_proj", "up_proj", "down_proj")}
    assert adapted == expected
    moe = model.get_base_model().model.layers[1].mlp
    assert type(moe.gate).__name__ == "DeepseekV3TopkRouter"  # not wrapped by peft
    assert type(moe.experts).__name__ == "DeepseekV3Experts"


def test_deepseek_folder_needs_our_load_until_peft_fixes_3711(tiny_deepseek_v3, tmp_path):
    """Canary: plain peft 0.21 re-targets down_proj & co. at the fused experts. If this starts passing
    through plain peft, peft has fixed issue #3711 and `v5_names_as_given` can go."""
    torch.manual_seed(0)
    model = get_method("lora").apply(load_model(tiny_deepseek_v3), LoraOptions(layers="all", r=4, dropout=0.05))
    _nudge(model)
    get_method("lora").save(model, tmp_path)
    ids = torch.arange(3, 19).unsqueeze(0)
    loaded = get_method("lora").load(load_model(tiny_deepseek_v3), tmp_path)
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="ParamWrapper"):
        PeftModel.from_pretrained(load_model(tiny_deepseek_v3), str(tmp_path))


def test_explicit_targets_are_checked_against_the_model(tiny_llama):
    model = load_model(tiny_llama)
    assert resolve_targets(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    with pytest.raises(UserError) as err:
        resolve_targets(model, ["q_proj", "c_attn"])
    assert "['c_attn']" in str(err.value) and "q_proj" in str(err.value).split("fix:")[1]
    adapted = _adapted(get_method("lora").apply(model, LoraOptions(layers="all", r=2, target_modules=["v_proj"])))
    assert adapted == {"model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"}


def test_rslora_scaling_and_dora_merge(tiny_llama):
    rs = get_method("lora").apply(load_model(tiny_llama), LoraOptions(layers="all", r=4, alpha=8, use_rslora=True))
    assert rs.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / 2)
    torch.manual_seed(0)
    dora = get_method("lora").apply(load_model(tiny_llama), LoraOptions(layers="all", r=4, use_dora=True, dropout=0.0))
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    _nudge(dora)
    ids = torch.arange(3, 19).unsqueeze(0)
    before = _logits(dora, ids)
    torch.testing.assert_close(_logits(get_method("lora").merge(dora), ids), before, atol=1e-4, rtol=0)
