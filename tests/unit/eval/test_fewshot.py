"""Tests for eval/fewshot.py: placement, determinism, similarity, and never leaking the test prompt."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.eval.fewshot import build_pool, few_shot_messages
from domaintune.eval.generate import split_last_turn


def chat(user: str, answer: str, system: str | None = None) -> dict:
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


POOL = [chat(f"question number {i} about topic {i % 5}", f"answer {i}") for i in range(40)]
POOL += [chat("What causes a mild headache in adults?", "Often dehydration."),
         chat("How do I treat a headache without medicine?", "Rest and water."),
         chat("北京是中国的首都吗？", "是的。"),
         {"messages": [{"role": "user", "content": "no answer here"}]},
         {"text": "a text record"}]


def test_examples_go_after_system_and_before_the_conversation():
    record = chat("Explain the theorem.", "Sure.", system="Be brief.")
    out = few_shot_messages(record, POOL, k=3, seed=1)
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in out[1:7]] == ["user", "assistant"] * 3
    assert out[7:] == record["messages"][1:]
    assert split_last_turn(out)[1] == "Sure."  # the reference is untouched
    assert record["messages"][0]["content"] == "Be brief." and len(record["messages"]) == 3  # input not mutated


def test_choice_is_seeded_and_deterministic():
    record = chat("Explain the theorem.", "Sure.")
    pool = build_pool(POOL)
    first = few_shot_messages(record, pool, k=4, seed=7)
    assert first == few_shot_messages(record, POOL, k=4, seed=7)  # a pool or raw records: same result
    assert first != few_shot_messages(record, pool, k=4, seed=8)
    other = chat("Something else entirely?", "No.")
    assert first[:8] != few_shot_messages(other, pool, k=4, seed=7)[:8]  # per-record draws


def test_similar_picks_the_most_overlapping_examples_last():
    out = few_shot_messages(chat("Why do adults get a headache?", "..."), POOL, k=2, by="similar")
    shots = [m["content"] for m in out[:4] if m["role"] == "user"]
    assert shots == ["How do I treat a headache without medicine?", "What causes a mild headache in adults?"]
    zh = few_shot_messages(chat("北京是哪个国家的首都？", "中国"), POOL, k=1, by="similar")
    assert zh[0]["content"] == "北京是中国的首都吗？"  # characters count as words for CJK


def test_k_zero_and_k_beyond_pool():
    record = chat("Explain the theorem.", "Sure.")
    assert few_shot_messages(record, POOL, k=0) == record["messages"]
    pool = build_pool(POOL)
    assert len(pool.pairs) == 43  # two records without a pair skipped
    out = few_shot_messages(record, pool, k=100)
    assert len(out) == 2 * 43 + 2


def test_build_pool_deduplicates_pairs():
    pool = build_pool([chat("a?", "b"), chat("a?", "b"), chat("a?", "c")])
    assert pool.pairs == (("a?", "b"), ("a?", "c"))


@settings(max_examples=60, deadline=None)
@given(prompt=st.text("abc 你好\n", min_size=1, max_size=12), seed=st.integers(0, 5),
       by=st.sampled_from(["random", "similar"]))
def test_never_picks_the_test_prompt(prompt, seed, by):
    twins = [chat(prompt, "leak"), chat("  " + prompt.upper() + "\n", "leak")]
    pool = build_pool(POOL[:6] + twins)
    out = few_shot_messages(chat(prompt, "ref"), pool, k=8, seed=seed, by=by)
    assert "leak" not in [m["content"] for m in out]


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        few_shot_messages(chat("a", "b"), POOL, k=1, by="tfidf")
    with pytest.raises(UserError):
        few_shot_messages(chat("a", "b"), POOL, k=-1)
