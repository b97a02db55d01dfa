"""Generation metrics against hand-computed values and sacrebleu's documented example."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.eval.metrics import (
    OTHER,
    bleu,
    chrf,
    exact_match,
    extract_label,
    is_chinese,
    json_field_metrics,
    label_metrics,
    normalize_answer,
    rouge,
)

# sacrebleu README, "Python API": three system sentences, two reference streams.
SACRE_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACRE_REFS = [["The dog bit the man.", "The dog had bit the man."],
              ["It was not unexpected.", "No one was surprised."],
              ["The man bit him first.", "The man had bitten the dog."]]


# --- normalization ----------------------------------------------------------------------------

def test_normalize_strips_ascii_and_cjk_punctuation_and_folds_width():
    assert normalize_answer("  Hello,   World! ") == "hello world"
    assert normalize_answer("「糖尿病」。") == "糖尿病"
    assert normalize_answer("ＡＢＣ１２３，") == "abc123"  # full-width forms, full-width comma


def test_normalize_keeps_symbols_and_combining_marks():
    assert normalize_answer("37°C") == "37°c"
    assert normalize_answer("हिन्दी") == "हिन्दी"  # vowel signs are marks, not punctuation


def test_normalize_options():
    assert normalize_answer("The Answer.", lower=False) == "The Answer"
    assert normalize_answer("a, b", strip_punct=False) == "a, b"
    assert normalize_answer("a  b", collapse_space=False) == "a  b"
    assert normalize_answer("The cat and a dog", strip_articles=True) == "cat and dog"
    assert normalize_answer("theory", strip_articles=True) == "theory"


@given(st.text(max_size=40))
def test_normalize_is_idempotent(text):
    once = normalize_answer(text, strip_articles=True)
    assert normalize_answer(once, strip_articles=True) == once


# --- exact match ------------------------------------------------------------------------------

def test_exact_match_per_example_and_corpus_in_percent():
    result = exact_match(["Paris.", "rome", "E11.9"], ["paris", "Milan", "e11.9"])
    assert result.per_example == [100.0, 0.0, 100.0]
    assert result.value == pytest.approx(200 / 3)
    assert result.binary and result.name == "exact_match"


def test_exact_match_with_several_references_and_options():
    assert exact_match(["the apple"], [["pear", "apple"]], strip_articles=True).value == 100.0
    assert exact_match(["the apple"], [["pear", "apple"]]).value == 0.0
    assert exact_match(["Apple"], ["apple"], lower=False).value == 0.0


def test_exact_match_length_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


@given(st.lists(st.text(max_size=20), max_size=10))
def test_exact_match_of_itself_is_100(texts):
    result = exact_match(texts, texts)
    assert result.per_example == [100.0] * len(texts)


# --- labels -----------------------------------------------------------------------------------

def test_label_metrics_match_hand_computed_three_label_matrix():
    gold = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    pred = ["a", "a", "b", "b", "c", "zzz", "c", "c", "a"]
    out = label_metrics(pred, gold)
    assert out["confusion"]["columns"] == ["a", "b", "c", OTHER]
    assert out["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 1, 1], [1, 0, 2, 0]]
    # a: P 2/3 R 2/3; b: P 1/2 R 1/3 F 0.4; c: P 2/3 R 2/3.
    assert out["per_label"]["b"] == pytest.approx({"precision": 50.0, "recall": 100 / 3, "f1": 40.0, "support": 3})
    assert out["macro"]["f1"] == pytest.approx(100 * (2 / 3 + 0.4 + 2 / 3) / 3)
    assert out["macro"]["precision"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 2 / 3) / 3)
    # Micro: 5 right; the "zzz" prediction is outside the label set, so precision counts 8.
    assert out["micro"]["precision"] == pytest.approx(100 * 5 / 8)
    assert out["micro"]["recall"] == pytest.approx(100 * 5 / 9)
    assert out["micro"]["f1"] == pytest.approx(100 * 50 / 85)
    assert out["accuracy"] == pytest.approx(100 * 5 / 9)
    assert out["n_other"] == 1 and out["n"] == 9
    assert out["per_example"] == [100.0, 100.0, 0.0, 100.0, 0.0, 0.0, 100.0, 100.0, 0.0]


def test_label_metrics_none_prediction_and_explicit_labels():
    out = label_metrics([None, "x"], ["x", "x"], labels=["y", "x"])
    assert out["confusion"]["labels"] == ["x", "y"]  # sorted
    assert out["confusion"]["matrix"] == [[1, 0, 1], [0, 0, 0]]
    assert out["per_label"]["y"]["f1"] == 0.0  # undefined counts as 0 and drags the macro mean
    assert out["macro"]["recall"] == pytest.approx(25.0)


def test_label_metrics_reference_outside_labels_is_user_error():
    with pytest.raises(UserError, match="not in the label set"):
        label_metrics(["a"], ["q"], labels=["a", "b"])


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abcd")), min_size=1, max_size=30))
def test_label_accuracy_equals_micro_recall_and_confusion_sums(pairs):
    gold, pred = zip(*pairs)
    out = label_metrics(list(pred), list(gold))
    assert out["accuracy"] == pytest.approx(out["micro"]["recall"])
    assert sum(map(sum, out["confusion"]["matrix"])) == len(pairs)


def test_extract_label_exact_then_first_then_none():
    labels = ["Chapter 1", "Chapter 10", "Chapter 2"]
    assert extract_label("chapter 2.", labels) == "Chapter 2"
    assert extract_label("It is Chapter 10, not Chapter 2", labels) == "Chapter 10"
    assert extract_label("Maybe chapter 2 or chapter 1", labels) == "Chapter 2"
    assert extract_label("no idea", labels) is None


def test_extract_label_respects_word_boundaries_but_not_in_chinese():
    assert extract_label("This is not certain", ["no", "yes"]) is None
    assert extract_label("诊断为糖尿病，需随访", ["高血压", "糖尿病"]) == "糖尿病"


# --- JSON fields ------------------------------------------------------------------------------

def test_json_field_metrics_hand_computed():
    preds = ['```json\n{"name": "Aspirin", "dose": "100 mg", "route": "iv"}\n```',
             'Here you go: {"name": "ibuprofen"} hope it helps',
             "not json at all"]
    refs = [{"name": "aspirin", "dose": "100 mg", "route": "oral"},
            '{"name": "Ibuprofen", "dose": null}',
            {"name": "paracetamol"}]
    out = json_field_metrics(preds, refs)
    # Pairs: gold 3 + 1 + 1 = 5, predicted 3 + 1 + 0 = 4, right 2 + 1 + 0 = 3.
    assert out["micro"] == pytest.approx({"precision": 75.0, "recall": 60.0, "f1": 100 * 2 * 0.75 * 0.6 / 1.35})
    assert out["n_invalid_json"] == 1
    assert out["exact"] == pytest.approx(100 / 3)
    # Per key (right/predicted/gold): name 2/2/3 (F 0.8), dose 1/1/1 (a null is absent), route 0/1/1.
    assert out["per_key"]["name"]["f1"] == pytest.approx(80.0)
    assert out["macro"]["f1"] == pytest.approx(100 * (0.8 + 1 + 0) / 3)
    assert out["per_example"] == pytest.approx([100 * 2 / 3, 100.0, 0.0])


def test_json_field_metrics_nested_and_lists():
    out = json_field_metrics(['{"a": {"b": 1}, "tags": ["X", "y"]}'], [{"a": {"b": 1}, "tags": ["x"]}])
    assert set(out["per_key"]) == {"a.b", "tags"}
    assert out["micro"]["precision"] == pytest.approx(100 * 2 / 3)
    assert out["micro"]["recall"] == 100.0


def test_json_field_metrics_bad_reference_is_user_error():
    with pytest.raises(UserError, match="reference 0 is not valid JSON"):
        json_field_metrics(["{}"], ["{oops"])


# --- BLEU, chrF, ROUGE ------------------------------------------------------------------------

def test_bleu_matches_sacrebleu_documented_example():
    # sacrebleu README: "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)" and "chrF2 = 59.73".
    assert bleu(SACRE_SYS, SACRE_REFS).value == pytest.approx(48.53, abs=0.005)
    assert chrf(SACRE_SYS, SACRE_REFS).value == pytest.approx(59.73, abs=0.005)


def test_bleu_hand_computed_with_brevity_penalty():
    # Precisions 6/6, 4/5, 3/4, 2/3; hypothesis 6 tokens, reference 7: BP = exp(1 - 7/6).
    result = bleu(["the cat sat on the mat"], ["the cat sat on the red mat"])
    expected = 100 * math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert result.value == pytest.approx(expected, abs=1e-6)
    assert result.per_example == pytest.approx([expected], abs=1e-6)
    assert not result.binary


def test_bleu_uses_chinese_tokenizer_for_chinese():
    pred, ref = ["患者患有二型糖尿病"], ["该患者有二型糖尿病"]
    auto = bleu(pred, ref).value
    assert auto == pytest.approx(bleu(pred, ref, tokenize="zh").value)
    assert auto > 0 and bleu(pred, ref, tokenize="13a").value == 0.0  # one "word" each without zh


def test_bleu_sentence_scores_differ_from_corpus_score():
    result = bleu(["the cat sat on the mat", "a dog"], ["the cat sat on the red mat", "the dog barked"])
    assert len(result.per_example) == 2
    assert result.per_example[0] > result.per_example[1]


def test_rouge1_hand_computed_two_sentences():
    preds = ["the cat sat on the mat", "a quick brown fox"]
    refs = ["the cat is on the mat", "the quick brown dog jumps"]
    out = rouge(preds, refs)
    # 1: 5 of 6 unigrams shared both ways -> F 5/6. 2: 2 shared, P 2/4, R 2/5 -> F 4/9.
    assert out["rouge1"].per_example == pytest.approx([100 * 5 / 6, 100 * 4 / 9])
    assert out["rouge1"].value == pytest.approx(100 * (5 / 6 + 4 / 9) / 2)
    # Bigrams of 1: 3 of 5 shared; LCS "the cat on the mat" = 5 of 6.
    assert out["rouge2"].per_example[0] == pytest.approx(60.0)
    assert out["rougeL"].per_example[0] == pytest.approx(100 * 5 / 6)


def test_rouge_chinese_is_segmented_not_dropped():
    out = rouge(["患者患有二型糖尿病，需要控制血糖。"], ["该患者有二型糖尿病，应控制血糖。"])
    # jieba: 患者 患有 二型 糖尿病 需要 控制 血糖 / 该 患者 有二型 糖尿病 应 控制 血糖 -> 4 of 7 shared.
    assert out["rouge1"].value == pytest.approx(100 * 4 / 7)
    assert 0 < out["rouge2"].value < out["rouge1"].value
    assert rouge(["完全不同的句子"], ["糖尿病患者"])["rouge1"].value < out["rouge1"].value


def test_rouge_keeps_non_ascii_latin_words():
    # rouge-score's default tokenizer would turn "café" into "caf" and "naïve" into "na ve".
    assert rouge(["café naïve"], ["café naïve"])["rouge1"].value == 100.0
    assert rouge(["café"], ["cafe"])["rouge1"].value == 0.0


def test_is_chinese_by_share():
    assert is_chinese("糖尿病是 diabetes")  # 4 of 12 non-space characters
    assert not is_chinese("糖尿病 diabetes")  # 3 of 11, below the 0.3 default
    assert is_chinese("糖尿病 diabetes", threshold=0.25)
    assert not is_chinese("diabetes mellitus 糖")
    assert not is_chinese("   ")
