"""Packing changes nothing but speed: a packed row trains exactly like its conversations one by one.

Definitions. The packed loss is the mean cross-entropy over ALL supervised tokens of the row, so
it equals the token-weighted mean of the per-conversation losses, sum(n_i * L_i) / sum(n_i), not
their plain mean. Underneath, every token's loss is the same as in its own conversation
(checked position by position): no token attends across a conversation border. Gradients then
match too: grad(packed loss) == sum_i (n_i / N) * grad(L_i), i.e. the sum over the individual
examples of the gradient of their summed token losses, divided by the row's token count.

With term weights the packed loss is the weighted mean over the whole row: sum_i S_i / sum_i W_i,
S_i and W_i being conversation i's weighted loss sum and weight sum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domaintune.models.templates import get_template
from domaintune.models.batch import IGNORE_INDEX, Example, TermWeighter, collate_packed, encode_record
from domaintune.models.loss import causal_lm_loss, next_token_targets

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"]
CONVERSATIONS = [
    [("user", "Hi"), ("assistant", "Hello there.")],
    [("system", "You are a helpful assistant."), ("user", "Explain the theorem."),
     ("assistant", "Sure, here it is. Machine learning models learn patterns from data and make predictions.")],
    [("user", "请用三句话总结这份报告。"), ("assistant", "机器学习是人工智能的一个分支。"),
     ("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")],
    [("user", "The quick brown fox?"), ("assistant", "Jumps over the lazy dog near the river bank.")],
]


def load(path, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)


@pytest.fixture
def examples(tiny_tokenizer):
    template = get_template("chatml")
    records = [{"messages": [{"role": r, "content": c} for r, c in conv]} for conv in CONVERSATIONS]
    out = [encode_record(r, tiny_tokenizer, template, max_len=256).example for r in records]
    assert len({len(ex) for ex in out}) == len(out)  # different lengths, so a leak would show
    return out


def token_losses(model, batch) -> torch.Tensor:
    """Cross-entropy of every supervised target, from full logits, in order."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep], targets[keep], reduction="none")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_is_the_token_weighted_mean_and_every_token_matches(family, attn, examples, request):
    model = load(request.getfixturevalue(family), attn).eval()
    singles = [collate_packed([ex]) for ex in examples]
    packed = collate_packed(examples)
    with torch.no_grad():
        losses, counts = zip(*(causal_lm_loss(model, b) for b in singles))
        packed_loss, packed_count = causal_lm_loss(model, packed)
        per_token_packed = token_losses(model, packed)
        per_token_single = torch.cat([token_losses(model, b) for b in singles])
    assert packed_count == sum(counts)
    weighted = sum(n * loss for n, loss in zip(counts, losses)) / sum(counts)
    torch.testing.assert_close(packed_loss, weighted, atol=1e-4, rtol=0)
    torch.testing.assert_close(per_token_packed, per_token_single, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_gradients_equal_the_sum_over_examples(family, examples, request):
    model = load(request.getfixturevalue(family), "sdpa").train()
    params = [p for p in model.parameters() if p.requires_grad]
    packed_loss, total = causal_lm_loss(model, collate_packed(examples))
    packed_grads = torch.autograd.grad(packed_loss, params, allow_unused=True)
    summed = [torch.zeros_like(p) for p in params]
    for ex in examples:
        loss, n = causal_lm_loss(model, collate_packed([ex]))
        for acc, g in zip(summed, torch.autograd.grad(loss * (n / total), params, allow_unused=True)):
            acc += 0 if g is None else g
    for p_grad, s_grad in zip(packed_grads, summed):
        torch.testing.assert_close(torch.zeros_like(s_grad) if p_grad is None else p_grad, s_grad,
                                   atol=1e-5, rtol=0)


TERMS = ["France", "theorem", "机器学习", "lazy dog", "Hello"]


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_weighted_loss_is_the_pooled_weighted_mean(family, tiny_tokenizer, request):
    """Term weights: packed = sum_i S_i / sum_i W_i, with S_i the weighted loss sum of conversation i."""
    template, weighter = get_template("chatml"), TermWeighter(TERMS, 3.0)
    records = [{"messages": [{"role": r, "content": c} for r, c in conv]} for conv in CONVERSATIONS]
    exs = [encode_record(r, tiny_tokenizer, template, 256, term_weighter=weighter).example for r in records]
    assert sum(ex.weights is None for ex in exs) == 1  # a mix: an unweighted example packs as all-ones
    model = load(request.getfixturevalue(family), "sdpa").eval()
    with torch.no_grad():
        packed_loss, packed_count = causal_lm_loss(model, collate_packed(exs))
        sums, weight_sums, counts = [], [], []
        for ex in exs:
            loss, n = causal_lm_loss(model, collate_packed([ex]))
            w = torch.tensor(ex.weights or [1.0] * len(ex))[1:][torch.tensor(ex.labels[1:]) != IGNORE_INDEX]
            sums.append(loss * w.sum())
            weight_sums.append(w.sum())
            counts.append(n)
    assert packed_count == sum(counts)
    torch.testing.assert_close(packed_loss, sum(sums) / sum(weight_sums), atol=1e-4, rtol=0)
    assert not torch.isclose(packed_loss, causal_lm_loss(model, collate_packed([Example(e.input_ids, e.labels)
                                                                               for e in exs]))[0])
