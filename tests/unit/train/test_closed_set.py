"""The closed-set loss: decisions found by walking the answer trie, collated in packed and padded
batches, and the cross-entropy among the allowed tokens (checked against log_softmax by hand)."""

from __future__ import annotations

import pytest
import torch

from domaintune.models.choice import ChoiceTrie
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.closed_set import answer_choices, mark_choices
from domaintune.models.batch import IGNORE_INDEX, Example, collate_packed, collate_padded, encode_record
from domaintune.models.loss import causal_lm_loss, closed_set_loss, next_token_targets

I = IGNORE_INDEX
TRIE = ChoiceTrie([[5, 6, 9], [5, 7, 9], [8, 9]], ["a", "b", "c"])


def test_decisions_are_the_branching_positions_of_the_answer():
    assert answer_choices([I, I, 5, 7, 9], TRIE) == ((2, (5, 8)), (3, (6, 7)))
    assert answer_choices([I, 8, 9], TRIE) == ((1, (5, 8)),)  # the token after 8 is forced: no decision
    assert answer_choices([I, I, 5, 7, 9, 13], TRIE) == ((2, (5, 8)), (3, (6, 7)))  # trained "\n" after the end


@pytest.mark.parametrize("labels", [[I, 5, 8, 9], [I, 5, 6], [I, I, I], [I, 4, 9]])
def test_an_answer_outside_the_set_gets_no_decisions(labels):
    assert answer_choices(labels, TRIE) == ()


def test_the_last_trained_span_is_the_answer():
    # a multi-turn record trains an earlier answer too; the final one is walked
    assert answer_choices([I, 3, 4, I, I, 8, 9], TRIE) == ((5, (5, 8)),)


def test_marking_leaves_other_examples_as_they_are():
    examples = [Example([1, 5, 7, 9], [I, 5, 7, 9]), Example([1, 4, 4], [I, 4, 4])]
    marked, facts = mark_choices(examples, TRIE)
    assert facts == {"examples": 1, "decisions": 2}
    assert marked[1] is examples[1] and marked[0].input_ids == examples[0].input_ids


def _by_hand(batch, full_logits):
    targets = next_token_targets(batch["labels"]).flatten()
    flat = full_logits.reshape(-1, full_logits.shape[-1])
    losses = []
    for pos, allowed, mask in zip(batch["choice_positions"], batch["choice_allowed"], batch["choice_mask"],
                                  strict=True):
        allowed = allowed[mask]
        log_p = torch.log_softmax(flat[pos][allowed], dim=0)
        losses.append(-log_p[(allowed == targets[pos]).nonzero()[0, 0]])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("collate", [collate_packed, lambda ex: collate_padded(ex, 0)], ids=["packed", "padded"])
def test_the_loss_is_the_cross_entropy_among_the_allowed_tokens(collate):
    examples, _ = mark_choices([Example([1, 2, 5, 7, 9], [I, I, 5, 7, 9]), Example([1, 8, 9], [I, 8, 9]),
                                Example([3, 5, 6, 9], [I, 5, 6, 9])], TRIE)
    batch = collate(examples)
    assert len(batch["choice_positions"]) == 5
    targets = next_token_targets(batch["labels"])
    assert all(int(targets.flatten()[p]) in set(a[m].tolist()) for p, a, m in
               zip(batch["choice_positions"], batch["choice_allowed"], batch["choice_mask"], strict=True))
    full = torch.randn(*batch["input_ids"].shape, 12, generator=torch.Generator().manual_seed(0))
    keep = targets != IGNORE_INDEX
    got = closed_set_loss(full[keep], targets[keep], batch)
    torch.testing.assert_close(got, _by_hand(batch, full))


def test_unmarked_batches_carry_no_choice_tensors():
    assert "choice_positions" not in collate_packed([Example([1, 2, 3], [I, 2, 3])])


def test_training_loss_adds_the_term_on_a_real_model(tiny_llama):
    tokenizer, template = load_tokenizer(tiny_llama), get_template("chatml")
    answers = ["cardiology", "neurology", "oncology"]
    trie = ChoiceTrie.build(answers, template, tokenizer)
    records = [{"messages": [{"role": "user", "content": f"case {i}"}, {"role": "assistant", "content": a}]}
               for i, a in enumerate(answers)]
    plain = [encode_record(r, tokenizer, template, 128).example for r in records]
    marked, facts = mark_choices(plain, trie)
    assert facts["examples"] == 3 and facts["decisions"] >= 3  # every answer branches at least at its start
    model = load_model(tiny_llama).eval()
    with torch.no_grad():
        base, n = causal_lm_loss(model, collate_packed(plain))
        both, m = causal_lm_loss(model, collate_packed(marked))
    assert n == m and float(both) > float(base)  # plus a cross-entropy, which is positive


def test_validation_accuracy_is_greedy_decoding_in_the_set(tiny_llama):
    from domaintune.models.codec import pad_id, prompt_ids
    from domaintune.models.decode import SamplingParams, generate
    from domaintune.train.step import validation_sums

    tokenizer, template = load_tokenizer(tiny_llama), get_template("chatml")
    answers = ["cardiology", "neurology", "oncology", "dermatology", "nephrology"]
    trie = ChoiceTrie.build(answers, template, tokenizer)
    records = [{"messages": [{"role": "user", "content": f"case {i}: {'pain ' * (i % 4)}fever"},
                             {"role": "assistant", "content": answers[i % 5] if i < 28 else "radiology"}]}
               for i in range(30)]  # the last two answer outside the set: always wrong
    examples, facts = mark_choices([encode_record(r, tokenizer, template, 128).example for r in records], trie)
    assert facts["examples"] == 28
    torch.manual_seed(3)
    model = load_model(tiny_llama).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6)  # sharp distributions: right and wrong answers both occur
    packed = [collate_packed(examples[i:i + 7]) for i in range(0, 30, 7)]
    padded = [collate_padded(examples[i:i + 7], pad_id(tokenizer)) for i in range(0, 30, 7)]
    params = SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie)
    decoded = generate(model, [prompt_ids(template, tokenizer, r["messages"][:1]) for r in records], params,
                       pad_id(tokenizer))
    texts = [tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for g in decoded]
    right = sum(text == r["messages"][1]["content"] for text, r in zip(texts, records, strict=True))
    assert 0 < right < 28  # a test that can tell the two apart
    for batches in (packed, padded):
        _, _, hits, n = validation_sums(model, batches)
        assert (hits, n) == (right, 30)
