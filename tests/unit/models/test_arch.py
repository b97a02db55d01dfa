"""Architecture facts: declared target names exist in real (tiny) models of each family."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DeepseekV3Config, Phi3Config

from domaintune.models.arch import arch_facts, linear_module_names


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"])
def tiny_model(request):
    return AutoModelForCausalLM.from_pretrained(request.getfixturevalue(request.param))


def test_every_target_exists_as_a_linear_module(tiny_model):
    facts = arch_facts(tiny_model.config)
    names = linear_names(tiny_model)
    for target in facts.linear_targets:
        assert any(name.endswith("." + target) for name in names), target
    assert facts.linear_targets == facts.attention_targets + facts.mlp_targets
    # The declared set is the discovered set: nothing missed, nothing invented.
    assert set(facts.linear_targets) == set(linear_module_names(tiny_model))


def test_layers_path_and_tied_embeddings(tiny_model):
    facts = arch_facts(tiny_model.config)
    layers = tiny_model.get_submodule(facts.layers_path)
    assert isinstance(layers, nn.ModuleList) and len(layers) == tiny_model.config.num_hidden_layers
    tied = tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight
    assert facts.tied_embeddings == tied


def test_families_and_moe_flag(tiny_model):
    facts = arch_facts(tiny_model.config)
    assert facts.family == tiny_model.config.model_type
    assert facts.moe == (facts.family == "deepseek_v3")


def test_deepseek_v3_experts_router_and_mla(tiny_deepseek_v3):
    model = AutoModelForCausalLM.from_pretrained(tiny_deepseek_v3)
    facts = arch_facts(model.config)
    experts = [n for n, _ in model.named_parameters() if re.search(facts.expert_pattern, n)]
    # transformers 5.x fuses routed experts into 3D tensors; only layer 1 is MoE (first_k_dense_replace=1).
    assert experts == ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"]
    assert model.get_parameter(experts[0]).dim() == 3
    assert not isinstance(model.get_submodule("model.layers.1.mlp.gate"), nn.Linear)
    assert "gate" not in linear_module_names(model)
    assert {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"} <= set(facts.attention_targets)


def test_deepseek_v3_without_q_lora_uses_q_proj():
    config = DeepseekV3Config(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                              num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1,
                              q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
    facts = arch_facts(config)
    assert facts.attention_targets[0] == "q_proj" and "q_a_proj" not in facts.linear_targets
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert set(facts.linear_targets) == set(linear_module_names(model))


def test_unknown_family_is_discovered_from_the_model():
    config = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2)
    facts = arch_facts(config)  # no model given: built on the meta device
    assert facts.family == "phi3" and not facts.moe
    assert set(facts.attention_targets) == {"qkv_proj", "o_proj"}
    assert set(facts.mlp_targets) == {"gate_up_proj", "down_proj"}
    assert facts.layers_path == "model.layers"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert arch_facts(config, model) == facts
