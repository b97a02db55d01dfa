"""Tests for eval/validation.py: the task metric the training loop selects by."""

from __future__ import annotations

import random

import pytest

from domaintune.eval.validation import task_metric
from domaintune.models.load import load_model
from domaintune.models.templates import get_template

LABELS = ["alpha", "beta", "gamma"]


def rows(n):
    rng = random.Random(0)
    return [{"messages": [{"role": "user", "content": f"item {i}"},
                          {"role": "assistant", "content": rng.choice(LABELS)}]} for i in range(n)]


def test_closed_set_metric_decodes_inside_the_set_and_is_deterministic(tiny_llama, tiny_tokenizer):
    model = load_model(tiny_llama)
    model.train()
    metric = task_metric(tiny_tokenizer, get_template("chatml"), rows(30), choices=LABELS, samples=10, seed=0)
    first, second = metric(model), metric(model)
    assert first == second and set(first) == {"accuracy", "macro_f1", "exact_match"}
    assert 0 <= first["accuracy"] <= 100 and first["accuracy"] == pytest.approx(first["exact_match"])
    assert model.training  # the caller's mode is restored


def test_free_text_metric_reports_chrf(tiny_llama, tiny_tokenizer):
    metric = task_metric(tiny_tokenizer, get_template("chatml"), rows(12), choices=None, samples=4, seed=0,
                         max_new_tokens=4)
    scores = metric(load_model(tiny_llama))
    assert set(scores) == {"exact_match", "chrf"}
