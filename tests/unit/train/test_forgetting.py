"""Tests for domaintune.train.forgetting: replay sampling, the EWC penalty and Fisher, curriculum ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.config import LoraOptions
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.models.load import load_model
from domaintune.models.templates import get_template
from domaintune.models.batch import collate_padded
from domaintune.train.data import encode_split
from domaintune.train.forgetting import (MISSING, OTHER, Ewc, build_ewc, fisher_diagonal, length_ranks,
                                         metadata_ranks, replay_records)
from domaintune.models.loss import causal_lm_loss


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}


# ---------------------------------------------------------------------------------------------- replay

def test_replay_draws_round_ratio_times_domain_without_repeats_when_the_file_is_large_enough():
    general = [{"text": f"g{i}"} for i in range(50)]
    drawn = replay_records(general, n_domain=33, ratio=0.5, seed=3)
    assert len(drawn) == round(0.5 * 33) == 16
    assert len({r["text"] for r in drawn}) == 16  # no repeats
    assert drawn == replay_records(general, 33, 0.5, seed=3)  # fixed by the seed
    assert drawn != replay_records(general, 33, 0.5, seed=4)


def test_replay_repeats_records_only_when_the_file_is_smaller():
    general = [{"text": f"g{i}"} for i in range(4)]
    counts = Counter(r["text"] for r in replay_records(general, n_domain=10, ratio=1.0, seed=0))
    assert sum(counts.values()) == 10 and set(counts) == {"g0", "g1", "g2", "g3"}
    assert set(counts.values()) <= {2, 3}  # spread evenly: each as often as fits, plus a random rest
    with pytest.raises(UserError, match="no record"):
        replay_records([], 10, 0.2, 0)


# ------------------------------------------------------------------------------------------------- EWC

def test_penalty_is_half_weight_times_fisher_weighted_squared_distance():
    ewc = Ewc({"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([[2.0]])},
              {"a": torch.tensor([0.0, 5.0]), "b": torch.tensor([[1.0]])}, weight=10.0)
    params = {"a": torch.tensor([3.0, -7.0]), "b": torch.tensor([[0.5]])}
    assert float(ewc.penalty(params)) == pytest.approx(0.5 * 10.0 * (1.0 * 9 + 0.0 * 144 + 2.0 * 0.25))
    assert float(ewc.penalty(ewc.anchor)) == 0.0


@settings(max_examples=40, deadline=None)
@given(fisher=st.lists(st.floats(1e-3, 10), min_size=1, max_size=8), scale=st.floats(0.01, 10),
       weight=st.floats(0.1, 1e4))
def test_penalty_grows_as_weights_move_away(fisher, scale, weight):
    f = torch.tensor(fisher, dtype=torch.float64)
    anchor = torch.zeros_like(f)
    direction = torch.linspace(-1.0, 1.0, len(fisher), dtype=torch.float64) + 0.5
    ewc = Ewc({"w": f}, {"w": anchor}, weight)
    near, far = (float(ewc.penalty({"w": anchor + s * direction})) for s in (scale, 2 * scale))
    assert 0.0 < near < far and far == pytest.approx(4 * near)  # quadratic in the distance


@pytest.fixture(scope="module")
def lora_model(tiny_llama):
    torch.manual_seed(0)
    return get_method("lora").apply(load_model(tiny_llama), LoraOptions(r=4, dropout=0.1))


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    rows = [chat(a, b) for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (2, 9))]
    return encode_split(rows, tiny_tokenizer, get_template("chatml"), 256)[0]


def test_fisher_is_the_mean_of_squared_per_example_gradients(lora_model, examples):
    model = lora_model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batches = [collate_padded([ex], 0) for ex in examples[:3]]
    fisher = fisher_diagonal(model, params, batches)
    assert model.training and all(p.grad is None for p in params.values())  # mode restored, .grad untouched
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        causal_lm_loss(model, batch)[0].backward()
        for n, p in params.items():
            expected[n] += p.grad.pow(2) / len(batches)
    model.zero_grad(set_to_none=True)
    model.train()
    for name in params:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-12)
    lora_b = [f for n, f in fisher.items() if "lora_B" in n]
    assert all(float(f.sum()) > 0 for f in lora_b)  # B starts at zero but its gradient does not


def test_build_ewc_anchors_a_copy_of_the_start_and_caps_samples(lora_model, examples):
    params = {n: p for n, p in lora_model.named_parameters() if p.requires_grad}
    ewc = build_ewc(lora_model, params, examples, samples=100, seed=0, pad_id=0, weight=5.0)
    assert ewc.penalty(params).item() == 0.0  # zero at the start
    name = next(n for n in params if "lora_B" in n)
    with torch.no_grad():
        params[name].add_(0.01)
    try:
        assert ewc.penalty(params).item() > 0  # the anchor is a copy, not the live tensor
    finally:
        with torch.no_grad():
            params[name].sub_(0.01)
    few = build_ewc(lora_model, params, examples, samples=2, seed=0, pad_id=0, weight=5.0)
    assert not all(torch.equal(few.fisher[n], ewc.fisher[n]) for n in params)  # 2 of 5 examples differ from all
    with pytest.raises(UserError, match="EWC reference"):
        build_ewc(lora_model, params, [], samples=2, seed=0, pad_id=0, weight=5.0)


def test_ewc_file_round_trips_exactly_and_refuses_a_changed_file(tmp_path):
    ewc = Ewc({"x.weight": torch.rand(3, 2)}, {"x.weight": torch.randn(3, 2)}, weight=7.0)
    digest = ewc.save(tmp_path / "ewc.safetensors")
    back = Ewc.load(tmp_path / "ewc.safetensors", 7.0, digest)
    assert torch.equal(back.fisher["x.weight"], ewc.fisher["x.weight"])
    assert torch.equal(back.anchor["x.weight"], ewc.anchor["x.weight"]) and back.weight == 7.0
    assert not list(tmp_path.glob(".tmp-*"))
    Ewc({"x.weight": torch.ones(3, 2)}, {"x.weight": torch.ones(3, 2)}, 7.0).save(tmp_path / "ewc.safetensors")
    with pytest.raises(UserError, match="missing or changed"):
        Ewc.load(tmp_path / "ewc.safetensors", 7.0, digest)
    with pytest.raises(UserError, match="missing or changed"):
        Ewc.load(tmp_path / "none.safetensors", 7.0, None)


# ------------------------------------------------------------------------------------------ curriculum

def test_metadata_ranks_follow_the_order_and_put_the_rest_last():
    records = [{"metadata": {"difficulty": "hard"}}, {"metadata": {"difficulty": "easy"}}, {"text": "no meta"},
               {"metadata": {"difficulty": "unknown"}}, {"metadata": {"difficulty": "medium"}}, {"metadata": None}]
    ranks, odd = metadata_ranks(records, "metadata.difficulty", ["easy", "medium", "hard"])
    assert ranks == [2, 0, 3, 3, 1, 3]
    assert odd == Counter({MISSING: 2, OTHER: 1})


def test_metadata_ranks_compare_as_text_and_follow_nested_paths():
    records = [{"metadata": {"level": 2}}, {"metadata": {"level": "1"}}, {"metadata": {"a": {"b": "x"}}}]
    assert metadata_ranks(records, "metadata.level", ["1", 2])[0] == [1, 0, 2]
    assert metadata_ranks(records, "metadata.a.b", ["x"])[0] == [1, 1, 0]


@given(lengths=st.lists(st.integers(1, 500), min_size=1, max_size=80), n=st.integers(1, 6))
def test_length_ranks_are_equal_size_buckets_shortest_first(lengths, n):
    ranks = length_ranks(lengths, n)
    assert all(0 <= r < n for r in ranks)
    by_rank = sorted(zip(ranks, lengths))
    assert [length for _, length in by_rank] == sorted(lengths)  # a higher bucket never holds a shorter one
    sizes = Counter(ranks)
    assert max(sizes.values()) - min(sizes.values()) <= 1
