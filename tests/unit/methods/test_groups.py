"""Layer specs, per-group AdamW parameter groups (an exact partition) and per-group clipping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from domaintune.config import IA3Options, LoraOptions
from domaintune.errors import UserError
from domaintune.methods import LayerGroup, clip_grad_norms, get_method, param_groups, parse_layer_spec
from domaintune.models.load import load_model


@pytest.mark.parametrize(("spec", "n", "layers"), [
    ("all", 4, (0, 1, 2, 3)),
    ("0-3", 30, (0, 1, 2, 3)),
    ("4,5,7", 30, (4, 5, 7)),
    (" 7, 0-1 ,5 ", 30, (0, 1, 5, 7)),
    ("bottom:2", 30, (0, 1)),
    ("top:3", 30, (27, 28, 29)),
    ("TOP:1", 2, (1,)),
    ("middle", 30, tuple(range(10, 20))),
    ("middle", 4, (1, 2)),
])
def test_specs(spec, n, layers):
    assert parse_layer_spec(spec, n) == layers


@pytest.mark.parametrize("spec", ["", "top:0", "top:31", "bottom:x", "5-3", "1,x", "30", "0-30", "middle:3", "top",
                                  "middle"])
def test_bad_specs_are_user_errors(spec):
    n = 2 if spec == "middle" else 30  # two layers have no middle third
    with pytest.raises(UserError, match="layer spec"):
        parse_layer_spec(spec, n)


@given(n=st.integers(1, 80), data=st.data())
def test_bottom_and_top_partition_all(n, data):
    k = data.draw(st.integers(0, n))
    bottom = parse_layer_spec(f"bottom:{k}", n) if k else ()
    top = parse_layer_spec(f"top:{n - k}", n) if n - k else ()
    assert bottom + top == parse_layer_spec("all", n) == tuple(range(n))


@given(n=st.integers(3, 80))
def test_middle_sits_between_equal_ends(n):
    middle = parse_layer_spec("middle", n)
    edge = round(n / 3)
    assert middle == tuple(range(edge, n - edge))
    assert not set(middle) & set(parse_layer_spec(f"bottom:{edge}", n) + parse_layer_spec(f"top:{edge}", n))


@given(n=st.integers(1, 80), data=st.data())
def test_lists_and_ranges_select_what_they_name(n, data):
    picks = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
    start = data.draw(st.integers(0, n - 1))
    end = data.draw(st.integers(start, n - 1))
    spec = ",".join(map(str, picks)) + f",{start}-{end}"
    assert parse_layer_spec(spec, n) == tuple(sorted(set(picks) | set(range(start, end + 1))))


GROUPS = [LayerGroup("low", (0,), lr_scale=0.5), LayerGroup("top", (1,), lr_scale=2.0, max_grad_norm=0.5)]


def _check_partition(model, groups):
    trainable = [p for p in model.parameters() if p.requires_grad]
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in trainable)  # each trainable parameter exactly once


def test_full_model_partition_rates_and_decay(tiny_qwen2):
    model = load_model(tiny_qwen2)
    groups = param_groups(model, 1e-3, 0.1, GROUPS)
    _check_partition(model, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    by_key = {(g["group"], g["weight_decay"]): [names[id(p)] for p in g["params"]] for g in groups}
    assert {g["group"]: g["lr"] for g in groups} == {"low": 5e-4, "top": 2e-3, "default": 1e-3}
    assert all(n.startswith("model.layers.0.") for n in by_key["low", 0.1] + by_key["low", 0.0])
    assert "model.layers.1.self_attn.q_proj.bias" in by_key["top", 0.0]  # qwen2 has qkv biases
    assert "model.layers.1.input_layernorm.weight" in by_key["top", 0.0]
    assert "model.layers.1.self_attn.q_proj.weight" in by_key["top", 0.1]
    assert by_key["default", 0.1] == ["model.embed_tokens.weight"]  # tied head: counted once
    assert by_key["default", 0.0] == ["model.norm.weight"]
    optimizer = torch.optim.AdamW(groups)
    assert optimizer.param_groups[0]["group"] == "low"  # torch keeps our keys for clip_grad_norms


@pytest.mark.parametrize(("family", "method", "opts", "marker"), [
    ("tiny_llama", "lora", LoraOptions(r=2), "lora_"),
    ("tiny_deepseek_v3", "ia3", IA3Options(), "ia3_l"),
])
def test_peft_models_group_by_layer(family, method, opts, marker, request):
    model = get_method(method).apply(load_model(request.getfixturevalue(family)), opts)
    groups = param_groups(model, 1e-3, 0.1, GROUPS)
    _check_partition(model, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            assert marker in names[id(param)]
            assert f"layers.{0 if group['group'] == 'low' else 1}." in names[id(param)]
    if method == "ia3":  # scaling vectors start at one; decaying them would pull toward zero
        assert all(g["weight_decay"] == 0.0 for g in groups)


def test_overlapping_or_reserved_groups_are_user_errors(tiny_llama):
    model = load_model(tiny_llama)
    with pytest.raises(UserError, match="layer 1 is in groups 'a' and 'b'"):
        param_groups(model, 1e-3, 0.0, [LayerGroup("a", (0, 1)), LayerGroup("b", (1,))])
    with pytest.raises(UserError, match="may not be called 'default'"):
        param_groups(model, 1e-3, 0.0, [LayerGroup("default", (0,))])


def test_clipping_is_per_group_and_returns_pre_clip_norms(tiny_llama):
    model = load_model(tiny_llama)
    groups = param_groups(model, 1e-3, 0.1, GROUPS)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    counts = {name: sum(p.numel() for g in groups if g["group"] == name for p in g["params"])
              for name in ("low", "top", "default")}
    norms = clip_grad_norms(groups, default_max_norm=None)
    assert norms == pytest.approx({name: count ** 0.5 for name, count in counts.items()})
    top = [p for g in groups if g["group"] == "top" for p in g["params"]]
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in top])) == pytest.approx(0.5, rel=1e-4)
    low = [p for g in groups if g["group"] == "low" for p in g["params"]]
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in low)  # no limit: measured only
    assert clip_grad_norms(groups, default_max_norm=1.0)["low"] == pytest.approx(counts["low"] ** 0.5)
    assert all(torch.linalg.vector_norm(p.grad) <= 1.0 + 1e-5 for p in low)
