"""Tests for data/answers.py: when a task's answers count as a closed set."""

from __future__ import annotations

from domaintune.data.answers import MIN_ROWS, closed_answer_set, final_answer


def chat(answer: str, q: str = "q") -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}


def test_few_answers_over_many_rows_are_a_closed_set():
    records = [chat("yes" if i % 3 else "no") for i in range(30)]
    assert closed_answer_set(records) == ["no", "yes"]


def test_free_text_small_sets_and_single_answers_are_not():
    assert closed_answer_set([chat(f"answer {i}") for i in range(100)]) is None           # every answer new
    assert closed_answer_set([chat("a" if i % 2 else "b") for i in range(MIN_ROWS - 1)]) is None  # too few rows
    assert closed_answer_set([chat("same") for _ in range(50)]) is None                   # nothing to choose
    assert closed_answer_set([{"text": "raw"} for _ in range(50)]) is None                # no answers at all


def test_final_answer_is_the_last_assistant_turn():
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "last"}]}
    assert final_answer(record) == "last" and final_answer({"text": "x"}) is None
