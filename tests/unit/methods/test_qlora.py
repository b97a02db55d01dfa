"""QLoRA: a clear error without CUDA/bitsandbytes; the 4-bit path itself runs only on a GPU."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from domaintune.config import QLoraOptions
from domaintune.errors import UserError
from domaintune.methods import get_method, trainable_report
from domaintune.methods.qlora import bnb_config, load_quantized
from domaintune.models.load import load_model

HAS_GPU_STACK = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_without_cuda_apply_says_use_lora(tiny_llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        get_method("qlora").apply(load_model(tiny_llama), QLoraOptions())
    assert str(err.value) == "qlora needs a CUDA GPU and bitsandbytes (fix: use method: lora on CPU)"


def test_without_bitsandbytes_apply_says_use_lora(tiny_llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real(name, *args))
    with pytest.raises(UserError, match="bitsandbytes"):
        get_method("qlora").apply(load_model(tiny_llama), QLoraOptions())


def test_merge_is_refused_on_4bit():
    assert get_method("qlora").merge(object()) is None


def test_bnb_config_follows_options():
    config = bnb_config(QLoraOptions(quant_type="fp4", double_quant=False, compute_dtype="float16"))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4"
    assert not config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.float16


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU_STACK, reason="needs a CUDA GPU and bitsandbytes")
def test_qlora_trains_saves_and_loads_on_gpu(tiny_llama, tmp_path):
    opts = QLoraOptions(r=4, dropout=0.0, compute_dtype="float32")
    method = get_method("qlora")
    model = method.apply(load_quantized(tiny_llama, opts), opts)
    assert 0 < trainable_report(model).share < 100
    ids = torch.arange(3, 19, device="cuda").unsqueeze(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()
    with torch.no_grad():
        start = model(input_ids=ids, labels=ids).loss.item()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, labels=ids)
    assert logits.loss.item() < start
    method.save(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    loaded = method.load(load_quantized(tiny_llama, opts), tmp_path)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, logits.logits, atol=1e-4, rtol=0)
