"""Tests for models/choice.py: decoding constrained to a closed answer set, with confidences."""

from __future__ import annotations

import math

import pytest
import torch

from domaintune.errors import UserError
from domaintune.models.choice import ChoiceTrie
from domaintune.models.codec import prompt_ids
from domaintune.models.decode import SamplingParams, generate
from domaintune.models.templates import get_template

ANSWERS = ["Diseases of the blood", "Diseases of the blood and blood-forming organs", "Neoplasms", "Yes", "你好"]
QUESTIONS = ["Hello there, how", "The quick brown fox", "你", "Please summarize the report"]


@pytest.fixture(scope="module")
def model(random_tiny_llama):
    return random_tiny_llama(1)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    template = get_template("chatml")
    trie = ChoiceTrie.build(ANSWERS, template, tiny_tokenizer)
    prompts = [prompt_ids(template, tiny_tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return template, trie, prompts


def _answer(tokenizer, ids):
    return tokenizer.decode(ids[:-1])  # the last id is the end-of-turn token


def test_answers_are_the_training_tokens(tiny_tokenizer, setup):
    template, trie, _ = setup
    prompt = prompt_ids(template, tiny_tokenizer, [{"role": "user", "content": "?"}])
    paths = {tuple(p) for p in _paths(trie)}
    for answer in ANSWERS:
        full, trained = template.encode([{"role": "user", "content": "?"}, {"role": "assistant", "content": answer}],
                                        tiny_tokenizer)
        assert full[:len(prompt)] == prompt
        answer_ids = [t for t, on in zip(full[len(prompt):], trained[len(prompt):]) if on]  # answer + end of turn
        assert tuple(answer_ids) in paths
    assert trie.depth == max(len(p) for p in paths) and len(trie) == len(ANSWERS) == len(paths)


def _paths(trie):
    out, stack = [], [(trie.root, [])]
    while stack:
        node, path = stack.pop()
        if not node.children:
            out.append(path)
        stack += [(child, [*path, token]) for token, child in node.children.items()]
    return out


def test_no_answer_outside_the_set_and_batched_equals_alone(model, tiny_tokenizer, setup):
    _, trie, prompts = setup
    params = SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie)
    batched = generate(model, prompts, params, tiny_tokenizer.pad_token_id)
    free = generate(model, prompts, SamplingParams(max_new_tokens=trie.depth), tiny_tokenizer.pad_token_id)
    for prompt, gen, unconstrained in zip(prompts, batched, free):
        assert _answer(tiny_tokenizer, gen.token_ids) in ANSWERS and gen.finish_reason == "stop"
        alone = generate(model, [prompt], params, tiny_tokenizer.pad_token_id)[0]
        assert alone.token_ids == gen.token_ids and alone.confidence == pytest.approx(gen.confidence, abs=1e-5)
        assert _answer(tiny_tokenizer, unconstrained.token_ids) not in ANSWERS  # the constraint did something


def _path_probability(model, prompt, path, trie):
    """The product of each token's probability renormalised over what the trie allows there."""
    node, logp, ids = trie.root, 0.0, list(prompt)
    with torch.no_grad():
        for token in path:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            allowed = sorted(node.children)
            logp += float(torch.log_softmax(logits[allowed], -1)[allowed.index(token)])
            node, ids = node.children[token], [*ids, token]
    return math.exp(logp)


def test_confidences_are_the_set_restricted_probabilities_and_sum_to_one(model, tiny_tokenizer, setup):
    _, trie, prompts = setup
    params = SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie)
    for prompt, gen in zip(prompts, generate(model, prompts, params, tiny_tokenizer.pad_token_id)):
        probs = {tuple(p): _path_probability(model, prompt, p, trie) for p in _paths(trie)}
        assert sum(probs.values()) <= 1 + 1e-5 and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert gen.confidence == pytest.approx(probs[tuple(gen.token_ids)], rel=1e-4)


def test_sampling_stays_inside_the_set(model, tiny_tokenizer, setup):
    _, trie, prompts = setup
    params = [SamplingParams(max_new_tokens=trie.depth, temperature=1.5, seed=s, stop_ids=trie.stop_ids, choices=trie)
              for s in range(12)]
    gens = generate(model, [prompts[0]] * 12, params, tiny_tokenizer.pad_token_id)
    assert {_answer(tiny_tokenizer, g.token_ids) for g in gens} <= set(ANSWERS)


def test_prompt_tuning_decodes_inside_the_set(tiny_llama, tiny_tokenizer, setup):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, trie, prompts = setup
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    net = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    params = SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie)
    gens = generate(net, prompts[:2], params, tiny_tokenizer.pad_token_id)
    assert all(_answer(tiny_tokenizer, g.token_ids) in ANSWERS and 0 < g.confidence <= 1 for g in gens)


def test_an_empty_set_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="empty"):
        ChoiceTrie.build([], get_template("chatml"), tiny_tokenizer)
