"""Drift statistics (data.drift) on real prompts: held-out ICD-10 questions stay under the thresholds
the training rows give (about 1 % of windows per statistic), general chat prompts and a collapsed label
distribution go over them, and the report finds the first shifted window."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from domaintune.data.drift import DriftMonitor, windows


def _rows(name: str) -> list[dict]:
    text = resources.files("domaintune.datasets").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def icd():
    rows = _rows("icd10_chapters.jsonl")
    return rows[:1800], rows[1800:]


def _prompt(row: dict) -> str:
    return [m["content"] for m in row["messages"] if m["role"] == "user"][-1]


def test_in_distribution_windows_rarely_alarm_and_another_domain_does(icd):
    train, held = icd
    monitor = DriftMonitor([_prompt(r) for r in train], [r["messages"][-1]["content"] for r in train])
    checks = [monitor.check([_prompt(r) for r in held[s:e]], [r["messages"][-1]["content"] for r in held[s:e]])
              for s, e in windows(len(held), 50)]
    alarms = sum(stat.alarm for c in checks for stat in c.values())
    assert len(checks) >= 10 and alarms <= 2, [{k: v.as_dict() for k, v in c.items()} for c in checks]
    general = [_prompt(r) if "messages" in r else r.get("prompt", "") for r in _rows("general_prompts.jsonl")][:50]
    shifted = monitor.check(general)
    assert shifted["unigram_kl"].alarm and shifted["unigram_kl"].value > 2 * shifted["unigram_kl"].threshold
    one_label = monitor.check([_prompt(r) for r in held[:50]], ["Neoplasms"] * 50)
    assert one_label["label_psi"].alarm and not one_label["unigram_kl"].alarm


def test_thresholds_follow_the_window_size_and_confidence_drops_are_caught(icd):
    train, held = icd
    confidences = [0.9, 0.8, 0.85, 0.95] * 50
    monitor = DriftMonitor([_prompt(r) for r in train], confidences=confidences, seed=3)
    assert monitor.thresholds(20)["unigram_kl"] > monitor.thresholds(200)["unigram_kl"]
    again = DriftMonitor([_prompt(r) for r in train], confidences=confidences, seed=3)
    assert again.thresholds(20) == monitor.thresholds(20)  # the same reference, the same thresholds
    prompts = [_prompt(r) for r in held[:40]]
    assert not monitor.check(prompts, confidences=[0.88] * 40)["confidence_drop"].alarm
    assert monitor.check(prompts, confidences=[0.4] * 40)["confidence_drop"].alarm


def test_windows_are_consecutive_with_a_tail_of_at_least_half_a_window():
    assert windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(9, 4) == [(0, 4), (4, 8)]  # one row left: too few for a window of its own
    assert windows(3, 4) == [(0, 3)] and windows(0, 4) == []
