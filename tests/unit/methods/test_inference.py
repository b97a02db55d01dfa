"""Tests for methods/inference.py: a merged adapter gives the unmerged outputs and unmerges after."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from domaintune.methods.inference import can_merge, merged_adapter

CONFIGS = {
    "lora": lambda: LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                             init_ia3_weights=False),
}


def peft_model(path, config):
    torch.manual_seed(0)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), config).eval()


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2"])
def test_merged_outputs_equal_unmerged_and_unmerge_restores(method, family, request):
    model = peft_model(request.getfixturevalue(family), CONFIGS[method]())
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert not torch.allclose(before, base, atol=1e-4)  # the adapter does change the outputs
        assert can_merge(model)
        with merged_adapter(model):
            assert not can_merge(model)  # merged now: nested use leaves it alone
            merged = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        with model.disable_adapter():
            base_after = model(input_ids=ids).logits
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(base_after, base, atol=1e-5, rtol=0)


def test_models_that_cannot_merge_are_left_alone(tiny_llama):
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    prompt = peft_model(tiny_llama, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    for model in (plain, prompt):
        assert not can_merge(model)
        with merged_adapter(model) as inside:
            assert inside is model
