"""Tests for models/prior.py and the prior in models/choice.py: the per-step mixture is a
distribution over the set, a heavy vote decides, and the weight chosen from teacher-forced
decisions predicts exactly which rows greedy decoding with that weight answers right."""

from __future__ import annotations

import math
import random

import pytest
import torch

from domaintune.data.kb import KnowledgeBase, entries_from_records, neighbour_votes
from domaintune.models.choice import ChoiceTrie
from domaintune.models.codec import prompt_ids
from domaintune.models.decode import SamplingParams, generate
from domaintune.models.prior import fit_prior_weight, path_decisions, vote_vectors
from domaintune.models.templates import get_template

ANSWERS = ["Diseases of the blood", "Diseases of the blood and blood-forming organs", "Neoplasms", "Yes", "No"]
QUESTIONS = ["Hello there, how", "The quick brown fox", "Please summarize the report", "Is it red?", "Why not",
             "Tell me more", "Good morning", "Which one"]


@pytest.fixture(scope="module")
def model(random_tiny_llama):
    return random_tiny_llama(3)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    template = get_template("chatml")
    return template, ChoiceTrie.build(ANSWERS, template, tiny_tokenizer)


def _records(seed: int):
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": rng.choice(ANSWERS)}]}
            for q in QUESTIONS]


def _votes(seed: int):
    rng = random.Random(seed)
    out = []
    for _ in QUESTIONS:
        raw = {a: rng.random() ** 3 for a in rng.sample(ANSWERS, 3)}
        out.append({a: w / sum(raw.values()) for a, w in raw.items()})
    return out


def _decode(model, tokenizer, template, trie, records, votes, weight):
    prompts = [prompt_ids(template, tokenizer, r["messages"][:-1]) for r in records]
    params = [SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie,
                             prior=trie.prior_vector(v), prior_weight=weight) for v in votes]
    return generate(model, prompts, params, tokenizer.pad_token_id)


def _answer(tokenizer, gen):
    return tokenizer.decode(gen.token_ids[:-1])


def test_the_mixed_confidences_of_all_answers_sum_to_one(setup):
    _, trie = setup
    vote = trie.prior_vector({"Neoplasms": 0.6, "Yes": 0.3, "Diseases of the blood": 0.1})
    total, generator, logits = 0.0, torch.Generator().manual_seed(0), {}
    for answer, sequence in trie.sequences.items():
        cursor = trie.cursor(vote, 0.4)
        for token in sequence:
            allowed = cursor.allowed(torch.device("cpu"))
            node_logits = logits.setdefault(id(cursor.node), torch.randn(len(allowed), generator=generator))
            log_p = cursor.log_probs(node_logits)
            assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-6)
            cursor.advance(token, float(log_p[allowed.tolist().index(token)]))
        assert cursor.answer == answer
        total += math.exp(cursor.log_prob)
    assert total == pytest.approx(1.0, abs=1e-6)  # one model distribution per node, as in decoding


def test_a_certain_vote_at_full_weight_decides_and_an_empty_one_changes_nothing(model, tiny_tokenizer, setup):
    template, trie = setup
    records = _records(0)
    certain = _decode(model, tiny_tokenizer, template, trie, records, [{"Neoplasms": 1.0}] * len(records), 1.0)
    assert all(_answer(tiny_tokenizer, g) == "Neoplasms" and g.confidence == pytest.approx(1.0) for g in certain)
    empty = _decode(model, tiny_tokenizer, template, trie, records, [{}] * len(records), 0.8)
    alone = _decode(model, tiny_tokenizer, template, trie, records, [{}] * len(records), 0.0)
    assert [g.token_ids for g in empty] == [g.token_ids for g in alone]


def test_teacher_forced_accuracy_per_weight_equals_decoding_with_that_weight(model, tiny_tokenizer, setup):
    template, trie = setup
    records, votes = _records(1), _votes(2)
    decisions = path_decisions(model, tiny_tokenizer, template, trie, records, batch_size=3)
    fit = fit_prior_weight(decisions, vote_vectors(trie, votes), weights=(0.0, 0.3, 0.6, 0.9))
    seen = set()
    for weight, predicted in fit.by_weight.items():
        gens = _decode(model, tiny_tokenizer, template, trie, records, votes, weight)
        right = [_answer(tiny_tokenizer, g) == r["messages"][-1]["content"] for g, r in zip(gens, records)]
        assert 100.0 * sum(right) / len(right) == pytest.approx(predicted)
        seen.add(predicted)
    assert len(seen) > 1  # the weights made a difference on this data
    assert fit.accuracy == max(fit.by_weight.values()) and fit.by_weight[fit.weight] == fit.accuracy
    assert fit.weight == min(w for w, a in fit.by_weight.items() if a == fit.accuracy)


def test_a_useless_vote_keeps_the_model_alone(model, tiny_tokenizer, setup):
    template, trie = setup
    records = _records(4)
    decisions = path_decisions(model, tiny_tokenizer, template, trie, records)
    fit = fit_prior_weight(decisions, vote_vectors(trie, [{}] * len(records)))
    assert fit.weight == 0.0 and len(set(fit.by_weight.values())) == 1


def test_an_answer_outside_the_set_has_no_path_and_counts_wrong(model, tiny_tokenizer, setup):
    template, trie = setup
    records = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Maybe"}]}]
    assert path_decisions(model, tiny_tokenizer, template, trie, records) == [None]
    assert fit_prior_weight([None], [trie.prior_vector({"Yes": 1.0})]).accuracy == 0.0


def test_neighbour_votes_weigh_by_rank_and_sum_to_one():
    rows = [("red apple fruit", "fruit"), ("green apple fruit", "fruit"), ("red car engine", "vehicle"),
            ("blue sky", "weather")]
    kb = KnowledgeBase.build(entries_from_records(
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]))
    vote, none = neighbour_votes(kb, ["red apple", "zebra"], k=3)
    assert sum(vote.values()) == pytest.approx(1.0) and max(vote, key=vote.get) == "fruit"
    assert set(vote) == {"fruit", "vehicle"} and none == {}


def test_at_full_weight_the_priors_own_top_answer_comes_out(model, tiny_tokenizer, setup):
    """Two answers share "Diseases of the blood" and hold 0.6 of the prior together, but "Neoplasms"
    alone holds 0.4, the most of any one answer: decoding at w=1 must give "Neoplasms" (shares by
    total mass below a token would follow the heavier shared prefix)."""
    template, trie = setup
    vote = {"Diseases of the blood": 0.3, "Diseases of the blood and blood-forming organs": 0.3, "Neoplasms": 0.4}
    records = _records(0)[:3]
    for gen in _decode(model, tiny_tokenizer, template, trie, records, [vote] * len(records), 1.0):
        assert _answer(tiny_tokenizer, gen) == "Neoplasms"
