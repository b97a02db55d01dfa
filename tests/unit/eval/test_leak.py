"""Memorization signals: verbatim spans of training data and PII in generations."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.eval.leak import pii_in_outputs, verbatim_overlap

TRAIN = [
    "Metformin is the first line drug for type 2 diabetes in adults without contraindications today.",
    "Patients with chest pain should receive an ECG within ten minutes of arrival at the hospital.",
]


# --- verbatim overlap -------------------------------------------------------------------------

def test_copied_span_is_found_with_length_and_row():
    pred = "As a rule, patients with chest pain should receive an ECG within ten minutes of arrival, ok?"
    out = verbatim_overlap([pred, "Something else entirely."], TRAIN, min_words=12)
    assert out["n_flagged"] == 1 and out["share_flagged"] == 50.0
    ex = out["examples"][0]
    # "patients ... arrival" is 13 words, compared casefolded without punctuation.
    assert ex == {"index": 0, "unit": "words", "length": 13, "training_row": 1,
                  "span": "patients with chest pain should receive an ecg within ten minutes of arrival"}
    assert out["per_example"] == [13, 0]


def test_spans_below_the_threshold_are_not_flagged():
    pred = "metformin is the first line drug for type 2"  # 9 words
    assert verbatim_overlap([pred], TRAIN, min_words=10)["n_flagged"] == 0
    assert verbatim_overlap([pred], TRAIN, min_words=9)["per_example"] == [9]


def test_span_across_two_training_texts_does_not_count():
    # The end of row 0 followed by the start of row 1 is contiguous only if texts were glued.
    pred = "without contraindications today patients with chest pain"
    assert verbatim_overlap([pred], TRAIN, min_words=5)["per_example"] == [0]
    assert verbatim_overlap([pred], TRAIN, min_words=4)["per_example"] == [4]


def test_whole_words_only():
    out = verbatim_overlap(["in adults without"], ["xin adults without"], min_words=3)
    assert out["n_flagged"] == 0
    out = verbatim_overlap(["adults without contra"], ["adults without contraindications"], min_words=3)
    assert out["n_flagged"] == 0


def test_run_stitched_from_two_places_is_verified():
    # Every 3-gram of the prediction is in training, but the 6-word span is not: the longest
    # verbatim span is 4 words, from either text.
    out = verbatim_overlap(["a b c d e f"], ["a b c d", "c d e f"], min_words=3)
    assert out["per_example"] == [4]
    assert out["examples"][0]["span"] in {"a b c d", "c d e f"}


def test_chinese_is_measured_in_characters():
    train = ["建议患者应每日监测空腹血糖并记录结果。", "高血压患者需低盐饮食。"]
    out = verbatim_overlap(["医生说患者应每日监测空腹血糖并记录", "完全无关的话"], train, min_chars=10)
    assert out["examples"][0]["unit"] == "chars"
    assert out["examples"][0]["span"] == "患者应每日监测空腹血糖并记录"
    assert out["per_example"] == [14, 0]


def test_empty_training_set_and_bad_threshold():
    assert verbatim_overlap(["a b c"], [], min_words=2)["n_flagged"] == 0
    assert verbatim_overlap([], TRAIN)["share_flagged"] == 0.0
    with pytest.raises(ValueError):
        verbatim_overlap(["a"], TRAIN, min_words=0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from("abcde"), min_size=1, max_size=25), st.lists(st.sampled_from("abcde"), max_size=15),
       st.integers(1, 4))
def test_longest_span_matches_brute_force(train_words, pred_words, n):
    train, pred = " ".join(train_words), " ".join(pred_words)
    padded = f" {train} "
    best = max((j - i for i in range(len(pred_words)) for j in range(i + n, len(pred_words) + 1)
                if f" {' '.join(pred_words[i:j])} " in padded), default=0)
    assert verbatim_overlap([pred], [train], min_words=n)["per_example"] == [best]


def test_many_training_rows_index_quickly_enough_for_a_unit_test():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    train = [" ".join(rng.choices(vocab, k=60)) for _ in range(2000)]
    preds = [" ".join(train[i].split()[10:30]) for i in range(0, 2000, 100)]
    out = verbatim_overlap(preds, train, min_words=12)
    assert out["per_example"] == [20] * 20
    assert [e["training_row"] for e in sorted(out["examples"], key=lambda e: e["index"])] == list(range(0, 2000, 100))


# --- PII --------------------------------------------------------------------------------------

def test_pii_found_counted_and_summarized():
    preds = ["Write to zhang.san@example.com or call 138-1234-5678.",
             "Contact li.si@example.org",
             "Dear <EMAIL>, your results are normal.",
             "No personal data here, ICD-10 E11.9 since 2024-01-15."]
    out = pii_in_outputs(preds)
    assert out["n_with_pii"] == 2 and out["by_kind"] == {"email": 2, "phone": 1}
    assert out["n_with_placeholder"] == 1 and out["placeholders"] == {"<EMAIL>": 1}
    assert out["summary"] == ["2 generations contain an email address", "1 generation contains a phone number",
                              "1 generation contains the placeholder <EMAIL>"]
    assert out["per_example"][0] == {"pii": {"email": 1, "phone": 1}, "placeholders": {}}
    assert out["per_example"][3] == {"pii": {}, "placeholders": {}}


def test_pii_examples_are_masked_so_the_report_does_not_leak():
    out = pii_in_outputs(["Mail zhang.san@example.com now"])
    assert out["examples"] == [{"index": 0, "kinds": ["email"], "placeholders": [], "masked": "Mail <EMAIL> now"}]
    assert "zhang.san" not in str(out)


def test_no_pii_gives_empty_summary():
    out = pii_in_outputs(["Take 500 mg twice daily.", "患者血压150/90"])
    assert out["n_with_pii"] == 0 and out["summary"] == [] and out["examples"] == []
