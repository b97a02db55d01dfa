"""Parity helpers: prompts from eval records, greedy continuations, teacher-forced agreement."""

from __future__ import annotations

import copy

import torch

from domaintune.export.parity import (SAMPLE_CONVERSATIONS, agreement, cases_from_records, exact_match, measure,
                                      pooled, shipped_prompt_ids, training_prompt_ids)
from domaintune.models.templates import get_template

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}


def test_cases_cut_each_chat_before_its_answer():
    records = [{"text": "raw text is skipped"}, CHAT, {"messages": [{"role": "user", "content": "open"}]}, CHAT]
    cases = cases_from_records(records, limit=2)
    assert [c.answer for c in cases] == ["4", None]
    assert [m["role"] for m in cases[0].messages] == ["system", "user"]


def test_no_records_fall_back_to_samples():
    assert [c.messages for c in cases_from_records(None, 3)] == list(SAMPLE_CONVERSATIONS[:3])
    assert len(cases_from_records([{"text": "x"}], 8)) == len(SAMPLE_CONVERSATIONS)


def test_training_and_shipped_prompt_ids_agree_for_a_faithful_template(tiny_tokenizer):
    cases = cases_from_records([CHAT], 4) + cases_from_records(None, 4)
    chatml = get_template("chatml")
    assert training_prompt_ids(chatml, tiny_tokenizer, cases) == shipped_prompt_ids(tiny_tokenizer, cases)
    wrong = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    wrong.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert training_prompt_ids(get_template("chatml"), tiny_tokenizer, cases) != shipped_prompt_ids(wrong, cases)


def test_same_model_agrees_everywhere_and_a_changed_one_does_not(merged_llama, tiny_tokenizer):
    prompts = training_prompt_ids(get_template("chatml"), tiny_tokenizer, cases_from_records(None, 2))
    stop = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ref = measure(merged_llama, prompts, [stop], tiny_tokenizer.pad_token_id, 12, gaps=True)
    assert all(0 < len(c) <= 12 for c in ref.continuations) and ref.ms_per_token > 0
    assert all(len(g) == len(c) and min(g) >= 0 for g, c in zip(ref.gaps, ref.continuations))
    assert pooled(agreement(merged_llama, prompts, ref.continuations)) == 1.0
    other = copy.deepcopy(merged_llama)
    with torch.no_grad():
        other.lm_head.weight.mul_(-1)  # reverses every preference
    assert pooled(agreement(other, prompts, ref.continuations)) < 0.2


def test_pooled_filters_near_ties():
    hits, gaps = [[True, False], [False]], [[1.0, 0.01], [0.5]]
    assert pooled(hits) == 1 / 3
    assert pooled(hits, gaps, 0.1) == 0.5 and pooled(hits, gaps, 0.6) == 1.0
    assert pooled([]) == 1.0


def test_exact_match_needs_answers(tiny_tokenizer):
    ids = [tiny_tokenizer("4", add_special_tokens=False)["input_ids"]]
    assert exact_match(tiny_tokenizer, ids, cases_from_records([CHAT], 1)) == 100.0
    assert exact_match(tiny_tokenizer, ids, cases_from_records(None, 1)) is None
