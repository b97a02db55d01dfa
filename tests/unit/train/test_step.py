"""Tests for domaintune.train.step: accumulation equals one big batch, any loss function, the LR schedule."""

from __future__ import annotations

import pytest
import torch

from domaintune.models.load import load_model
from domaintune.models.templates import get_template
from domaintune.models.batch import collate_packed
from domaintune.train.data import encode_split
from domaintune.models.loss import causal_lm_loss
from domaintune.train.step import accumulate_gradients, lr_factor, validation_loss


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}


def test_accumulation_equals_one_big_batch(tiny_llama, tiny_tokenizer):
    rows = [chat(1, 2), chat(3, 4), {**chat(5, 6), "messages": chat(5, 6)["messages"] * 3}, chat(7, 8)]
    examples, _ = encode_split(rows, tiny_tokenizer, get_template("chatml"), 256)
    assert len({len(e) for e in examples}) > 1  # uneven micro-batches: a plain mean would be wrong
    results = []
    for batches in ([collate_packed(examples)], [collate_packed(examples[:1]), collate_packed(examples[1:])]):
        torch.manual_seed(0)
        model = load_model(tiny_llama).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_sum, supervised, _ = accumulate_gradients(model, batches)
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        results.append((loss_sum / supervised, grads, [p.detach().clone() for p in model.parameters()]))
    (loss_a, grads_a, after_a), (loss_b, grads_b, after_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for a, b in zip(grads_a + after_a, grads_b + after_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_loss_fn_replaces_the_loss_in_training_but_never_in_validation(tiny_llama, tiny_tokenizer):
    examples, _ = encode_split([chat(1, 2), chat(3, 4)], tiny_tokenizer, get_template("chatml"), 256)
    batches = [collate_packed(examples[:1]), collate_packed(examples[1:])]
    calls = []

    def doubled(model, batch):  # any (model, batch) -> (mean loss, supervised tokens)
        loss, n = causal_lm_loss(model, batch)
        calls.append(n)
        return 2 * loss, n

    results = []
    for loss_fn in (causal_lm_loss, doubled):
        torch.manual_seed(0)
        model = load_model(tiny_llama).train()
        loss_sum, supervised, _ = accumulate_gradients(model, batches, loss_fn=loss_fn)
        results.append((loss_sum / supervised, [p.grad.clone() for p in model.parameters()]))
    (plain, grads), (twice, grads2) = results
    assert twice == pytest.approx(2 * plain, rel=1e-6) and len(calls) == 2
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(b, 2 * a, atol=1e-6, rtol=1e-5)
    val = validation_loss(model, batches)
    assert val == pytest.approx(plain, rel=1e-5) and len(calls) == 2  # validation: plain loss, no call
    assert model.training


def test_lr_schedule_warms_up_then_decays():
    cosine = [lr_factor(s, 2, 10, "cosine") for s in range(10)]
    assert cosine[0] < cosine[1] < cosine[2] == 1.0 and all(a > b for a, b in zip(cosine[2:], cosine[3:]))
    assert 0 < cosine[-1] < 0.05
    assert [lr_factor(s, 0, 4, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor(7, 2, 10, "constant") == 1.0
