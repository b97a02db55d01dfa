"""Bottleneck adapters: identity at start, the parameter formula, base keys untouched, save/load checks."""

from __future__ import annotations

import json

import pytest
import torch

from domaintune.config import AdapterOptions
from domaintune.errors import UserError
from domaintune.methods import get_method, trainable_report
from domaintune.methods.adapter import BottleneckAdapter
from domaintune.models.load import load_model


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_deepseek_v3"])
def test_starts_as_the_identity_and_keeps_base_keys(family, request):
    path = request.getfixturevalue(family)
    base = load_model(path)
    ids = torch.arange(3, 19).unsqueeze(0)
    expected, base_keys = _logits(base, ids), set(base.state_dict())
    model = get_method("adapter").apply(base, AdapterOptions(bottleneck=8))
    assert torch.equal(_logits(model, ids), expected)
    new_keys = set(model.state_dict()) - base_keys
    assert base_keys <= set(model.state_dict())
    assert new_keys and all("_adapter." in k for k in new_keys)


@pytest.mark.parametrize(("places", "per_layer"), [(["attention", "mlp"], 2), (["mlp"], 1)])
def test_parameter_count_follows_the_formula(places, per_layer, tiny_llama):
    model = get_method("adapter").apply(load_model(tiny_llama), AdapterOptions(bottleneck=8, places=places))
    hidden, layers, b = 32, 2, 8
    assert trainable_report(model).trainable == layers * per_layer * (2 * hidden * b + b + hidden)
    assert {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad} == {f"{p}_adapter" for p in places}


def test_default_share_on_a_smollm2_shaped_model():
    hidden, layers, b, total = 576, 30, 64, 134_515_008  # SmolLM2-135M
    share = 100 * layers * 2 * (2 * hidden * b + b + hidden) / total
    assert 1 < share < 4
    assert AdapterOptions().bottleneck == b


def test_adapter_changes_the_output_once_trained(tiny_llama):
    model = get_method("adapter").apply(load_model(tiny_llama), AdapterOptions(bottleneck=8, activation="silu"))
    ids = torch.arange(3, 19).unsqueeze(0)
    before = _logits(model, ids)
    adapter = model.model.layers[0].mlp_adapter
    assert isinstance(adapter, BottleneckAdapter) and isinstance(adapter.act, torch.nn.SiLU)
    with torch.no_grad():
        adapter.up.weight.fill_(0.1)
    assert not torch.allclose(_logits(model, ids), before)


def test_applying_twice_is_refused(tiny_llama):
    model = get_method("adapter").apply(load_model(tiny_llama), AdapterOptions(bottleneck=4))
    with pytest.raises(UserError, match="already has adapters"):
        get_method("adapter").apply(model, AdapterOptions(bottleneck=4))


def test_half_precision_base_gets_fp32_adapters(tiny_llama):
    model = get_method("adapter").apply(load_model(tiny_llama, dtype=torch.bfloat16), AdapterOptions(bottleneck=4))
    assert model.model.layers[0].attention_adapter.down.weight.dtype == torch.float32
    out = model(input_ids=torch.arange(3, 9).unsqueeze(0)).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_saved_config_round_trips_and_checks_the_base(tiny_llama, tiny_qwen2, tmp_path):
    opts = AdapterOptions(bottleneck=4, places=["attention"], activation="relu", dropout=0.1)
    get_method("adapter").save(get_method("adapter").apply(load_model(tiny_llama), opts), tmp_path)
    record = json.loads((tmp_path / "method.json").read_text())
    assert {k: record[k] for k in ("bottleneck", "places", "activation", "dropout")} == opts.model_dump(
        exclude={"method"})
    assert record["base"]["model_type"] == "llama"
    with pytest.raises(UserError, match="another base model"):
        get_method("adapter").load(load_model(tiny_qwen2), tmp_path)
