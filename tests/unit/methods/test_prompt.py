"""Prompt tuning: text initialization from the local tokenizer folder, vocabulary sampling otherwise."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from domaintune.config import PromptOptions
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.models.load import load_model

TEXT = "The patient reported a mild headache"


def _soft_prompt(model) -> torch.Tensor:
    return model.prompt_encoder["default"].embedding.weight.detach()


def test_text_init_copies_the_text_embeddings(tiny_llama, tiny_tokenizer_dir):
    ids = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)(TEXT)["input_ids"]
    base = load_model(tiny_llama)
    table = base.get_input_embeddings().weight.detach().clone()
    opts = PromptOptions(num_virtual_tokens=len(ids), init_text=TEXT)
    model = get_method("prompt").apply(base, opts, tokenizer_path=tiny_tokenizer_dir)
    assert torch.equal(_soft_prompt(model), table[ids])


def test_tokenizer_defaults_to_the_model_folder(tiny_qwen2):
    model = get_method("prompt").apply(load_model(tiny_qwen2), PromptOptions(num_virtual_tokens=3, init_text=TEXT))
    assert model.peft_config["default"].tokenizer_name_or_path == str(tiny_qwen2)


def test_text_init_without_a_tokenizer_folder_is_a_user_error(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="tokenizer folder"):
        get_method("prompt").apply(load_model(tiny_llama), PromptOptions(init_text=TEXT), tokenizer_path=tmp_path)


def test_no_text_samples_rows_of_the_vocabulary(tiny_llama):
    base = load_model(tiny_llama)
    table = base.get_input_embeddings().weight.detach().clone()
    model = get_method("prompt").apply(base, PromptOptions(num_virtual_tokens=5))
    prompt = _soft_prompt(model)
    assert prompt.shape == (5, table.shape[1])
    assert all((table == row).all(dim=1).any() for row in prompt)
