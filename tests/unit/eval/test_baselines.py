"""Tests for eval/baselines.py: the classic baselines a tuned model is set against."""

from __future__ import annotations

import random

import pytest

from domaintune.data.classic import C_GRID
from domaintune.eval.baselines import against_model, classic_baselines, prompt_text

TOPICS = {"cardiology": ["heart", "valve", "artery", "aorta"], "neurology": ["brain", "nerve", "seizure", "spine"],
          "oncology": ["tumor", "cancer", "lymphoma", "metastasis"]}


def chat(question: str, answer: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def labelled(n: int, seed: int, skew: float = 0.0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = "cardiology" if rng.random() < skew else rng.choice(sorted(TOPICS))
        rows.append(chat(f"pain near the {rng.choice(TOPICS[label])} since {rng.randint(1, 9)} days", label))
    return rows


def test_tfidf_lr_learns_a_separable_task_and_majority_is_the_mode():
    train, val, test = labelled(120, 0, skew=0.4), labelled(30, 1), labelled(60, 2)
    out = classic_baselines(train, test, val=val, closed=True)
    assert out["tfidf_lr"]["metrics"]["accuracy"] == 100.0 and out["nearest"]["metrics"]["accuracy"] == 100.0
    assert set(out["majority"]["predictions"]) == {"cardiology"}
    share = sum(r["messages"][-1]["content"] == "cardiology" for r in test) / len(test)
    assert out["majority"]["metrics"]["accuracy"] == pytest.approx(100 * share)
    assert out["tfidf_lr"]["settings"]["C"] in C_GRID and len(out["tfidf_lr"]["settings"]["val_accuracy_by_C"]) == 5


def test_free_text_gets_the_nearest_answer_scored_by_chrf():
    train = [chat(f"define term {i}", f"definition number {i}") for i in range(20)]
    test = [chat("define term 3", "definition number 3"), chat("define term 7", "definition number 7")]
    out = classic_baselines(train, test, closed=False)
    assert "tfidf_lr" not in out and out["nearest"]["predictions"] == ["definition number 3", "definition number 7"]
    assert out["nearest"]["metrics"]["chrf"] == pytest.approx(100.0)


def test_against_model_reports_differences_and_paired_p_values():
    train, test = labelled(90, 0), labelled(60, 2)
    fitted = classic_baselines(train, test, closed=True)
    perfect = [100.0] * len(test)
    out = against_model(perfect, fitted, "accuracy")
    assert out["majority"]["diff"] > 50 and out["majority"]["p_value"] < 1e-6
    assert out["tfidf_lr"]["diff"] == pytest.approx(0.0) and out["tfidf_lr"]["p_value"] == 1.0


def test_prompt_text_joins_system_and_user_turns():
    assert prompt_text(chat("q", "a", system="be brief")) == "be brief\nq"
