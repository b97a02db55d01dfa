"""int8: per-row quantization bounds, kernel vs fallback, and a pickle-free save/load round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from domaintune.errors import UserError
from domaintune.export import quantize
from domaintune.export.quantize import INT8_FILE, Int8Linear, load_int8, quantize_int8, save_int8
from domaintune.models.load import load_model

IDS = torch.arange(3, 40).unsqueeze(0)


def _logits(model):
    with torch.inference_mode():
        return model(input_ids=IDS).logits


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), scale=st.floats(1e-6, 1e3), seed=st.integers(0, 99))
def test_weights_never_clip_and_err_at_most_half_a_step(rows, cols, scale, seed):
    linear = nn.Linear(cols, rows)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * scale)
    q = Int8Linear.from_linear(linear)
    assert q.weight_int8.abs().max() <= 127
    assert torch.equal(q.weight_scale.to(torch.bfloat16).float(), q.weight_scale)  # exact in the kernel's dtype
    error = (q.dequantized_weight() - linear.weight).abs()
    assert (error <= q.weight_scale[:, None] / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("kernel", [True, False])
def test_int8_linear_matches_float_linear(kernel, monkeypatch):
    monkeypatch.setattr(quantize, "_KERNEL_OK", kernel and quantize._KERNEL_OK)
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(2, 5, 64)
    got, want = Int8Linear.from_linear(linear)(x), linear(x)
    assert got.shape == want.shape
    # int8 weights (~0.4% per weight) plus, on the kernel path, bfloat16 activations
    assert ((got - want).norm() / want.norm()).item() < 0.02


def test_quantize_replaces_linears_but_keeps_the_head_float(merged_llama):
    model = quantize_int8(copy.deepcopy(merged_llama))
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    assert kinds == {"Int8Linear"}
    assert type(model.lm_head) is nn.Linear
    top1 = (_logits(model).argmax(-1) == _logits(merged_llama).argmax(-1)).float().mean()
    assert top1 >= 0.85  # tiny random model: near-ties everywhere (the embedded model is checked in e2e)


def test_save_and_load_round_trip_without_pickle(merged_llama, tmp_path):
    model = quantize_int8(copy.deepcopy(merged_llama))
    path = save_int8(model, tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["domaintune"] == quantize.FORMAT_TAG
        assert handle.get_tensor("model.layers.0.self_attn.q_proj.weight_int8").dtype == torch.int8
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in tmp_path.iterdir())
    assert torch.equal(_logits(load_int8(tmp_path)), _logits(model))


def test_tied_head_is_stored_once_and_retied(tiny_qwen2, tmp_path):
    model = quantize_int8(load_model(tiny_qwen2).eval())
    save_int8(model, tmp_path)
    with safe_open(str(tmp_path / INT8_FILE), framework="pt") as handle:
        assert "lm_head.weight" not in handle.keys()
    loaded = load_int8(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded), _logits(model))


def test_not_an_int8_export_is_a_user_error(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="holds no model.int8.safetensors"):
        load_int8(tiny_llama)
    save_file({"x": torch.zeros(1)}, str(tmp_path / INT8_FILE))
    with pytest.raises(UserError, match="export it again"):
        load_int8(tmp_path)
