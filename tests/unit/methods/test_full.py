"""Full fine-tuning: everything trains, and the saved folder is a standalone Hugging Face model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from domaintune.config import FullOptions
from domaintune.methods import get_method, saved_method, trainable_report
from domaintune.models.load import load_model


@pytest.mark.parametrize("family", ["tiny_qwen2", "tiny_deepseek_v3"])
def test_saved_folder_loads_without_the_base(family, request, tmp_path):
    model = get_method("full").apply(load_model(request.getfixturevalue(family)), FullOptions())
    assert trainable_report(model).share == 100
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)  # a visible change, through the tie where there is one
    get_method("full").save(model, tmp_path)
    assert saved_method(tmp_path) == "full"
    standalone = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.arange(3, 19).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(standalone(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert standalone.config.tie_word_embeddings == model.config.tie_word_embeddings
