"""Tests for domaintune.data.dedup: exact keys, and MinHash/LSH near-duplicate detection."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given
from hypothesis import strategies as st

from domaintune.data.dedup import NearDuplicateIndex, _shingle_hashes, exact_key, normalize_for_dedup
from domaintune.errors import UserError

_RNG = random.Random(7)
_VOCAB = ["".join(_RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_RNG.randint(3, 8)))
          for _ in range(3000)]
_HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def _text(seed: int, words: int = 60) -> str:
    return " ".join(random.Random(seed).choices(_VOCAB, k=words)) + "."


def _change_word(text: str, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    words[rng.randrange(len(words))] = rng.choice(_VOCAB)
    return " ".join(words)


def _jaccard(a: str, b: str, k: int = 5) -> float:
    grams = [{n[i:i + k] for i in range(len(n) - k + 1)} for n in map(normalize_for_dedup, (a, b))]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


# --- exact keys ---------------------------------------------------------------------------------

def test_exact_key_ignores_case_punctuation_and_whitespace():
    key = exact_key("The patient was given 5 mg, twice a day.")
    assert key == exact_key("the PATIENT was   given 5mg twice a day!!")
    assert key == exact_key("  The\tpatient\nwas given 5 mg twice-a-day ")
    assert len(key) == 16


def test_exact_key_differs_for_different_texts():
    assert exact_key("give 5 mg") != exact_key("give 50 mg")
    assert exact_key("cats") != exact_key("cat")


def test_exact_key_chinese():
    assert exact_key("你好，世界！") == exact_key("你好 世界。")
    assert exact_key("你好，世界") != exact_key("你好，中国")
    assert normalize_for_dedup("Hello,  World! 你好，世界。") == "helloworld你好世界"


def test_normalize_keeps_every_script_and_unifies_width():
    assert normalize_for_dedup("Привет, МИР!") == "приветмир"
    # Devanagari vowel signs are marks: dropping them would merge "कम" (less) and "काम" (work).
    assert exact_key("कम") != exact_key("काम")
    assert normalize_for_dedup("ＡＢＣ１２３！") == "abc123"
    assert normalize_for_dedup("Straße") == normalize_for_dedup("STRASSE")
    assert normalize_for_dedup("snake_case\u00a0text") == "snakecasetext"


@given(st.text(alphabet=st.characters(codec="ascii")))
def test_exact_key_invariant_to_upper_case_and_trailing_space(text):
    assert exact_key(text) == exact_key(text.upper() + "  ")


# A sign is a "-" or "+" right before a digit and not right after a letter ("-5", not "covid-19"), so
# spaces inserted around one change the key; everything else ignores them.
@given(st.text().filter(lambda t: not set(t) & set("-+\u2212\uff0b\uff0d")))
def test_exact_key_invariant_to_inserted_spaces_and_punctuation(text):
    assert exact_key(text) == exact_key(" ".join(text) + " ,.!?\u3000")


@given(st.text(alphabet=st.characters(codec="ascii")))
def test_ascii_fast_path_agrees_with_unicode_path(text):
    # The ideographic full stop is dropped, but it sends the text down the non-ASCII path.
    assert normalize_for_dedup(text + "\u3002") == normalize_for_dedup(text)


# --- near duplicates ----------------------------------------------------------------------------

def test_planted_near_duplicates_found_and_unrelated_not_flagged():
    index = NearDuplicateIndex()
    originals = [_text(seed) for seed in range(200)]
    assert [index.check_and_add(f"orig{i}", t) for i, t in enumerate(originals)] == [None] * 200
    copies = [_change_word(originals[i], seed=i) for i in range(0, 200, 10)]
    assert all(_jaccard(c, originals[i * 10]) > 0.85 for i, c in enumerate(copies))
    assert [index.check_and_add(f"copy{i}", c) for i, c in enumerate(copies)] == \
        [f"orig{i}" for i in range(0, 200, 10)]
    assert len(index) == 200


def test_chinese_near_duplicate_found():
    rng = random.Random(3)
    text = "".join(rng.choices(_HANZI, k=150))
    edited = text[:70] + "的" + text[71:]
    other = "".join(rng.choices(_HANZI, k=150))
    index = NearDuplicateIndex()
    index.add("zh", text)
    assert index.query(edited) == "zh"
    assert index.query(other) is None


def test_pair_well_below_threshold_not_flagged():
    a = _text(1)
    words = a.split()
    b = " ".join(words[:40] + random.Random(2).choices(_VOCAB, k=20))
    similarity = _jaccard(a, b)
    assert 0.4 < similarity < 0.75
    strict = NearDuplicateIndex(threshold=0.85)
    strict.add("a", a)
    assert strict.query(b) is None
    # The same pair is flagged once the threshold is well below its Jaccard similarity.
    loose = NearDuplicateIndex(threshold=similarity - 0.15)
    loose.add("a", a)
    assert loose.query(b) == "a"


def test_lsh_candidates_below_threshold_are_rejected_by_verification():
    candidates = flagged = 0
    for seed in range(40):
        a = _text(100 + seed)
        b = " ".join(a.split()[:50] + random.Random(seed).choices(_VOCAB, k=10))
        assert _jaccard(a, b) < 0.77
        index = NearDuplicateIndex(threshold=0.85)
        index.add("a", a)
        candidates += bool(index._lsh.query(index._as_minhash(index._signature(b))))
        flagged += index.query(b) is not None
    assert candidates >= 3  # LSH alone would have flagged these
    assert flagged == 0


def test_check_and_add_returns_first_key_and_skips_duplicates():
    index = NearDuplicateIndex()
    first = _text(11)
    assert index.check_and_add("first", first) is None
    assert index.check_and_add("second", _change_word(first, 1)) == "first"
    assert index.check_and_add("third", first.upper()) == "first"
    assert len(index) == 1


def test_query_does_not_add_and_add_does_not_check():
    index = NearDuplicateIndex()
    text = _text(12)
    assert index.query(text) is None
    assert len(index) == 0
    index.add("a", text)
    index.add("b", text)
    assert len(index) == 2
    assert index.query(text) == "a"


def test_short_and_empty_texts():
    index = NearDuplicateIndex()
    assert index.check_and_add("abc", "a b c") is None
    assert index.check_and_add("abc2", "ABC!") == "abc"
    assert index.check_and_add("abd", "abd") is None
    assert index.check_and_add("empty", "") is None
    assert index.check_and_add("empty2", " ... ") == "empty"


def test_threshold_one_flags_only_identical_normalized_text():
    index = NearDuplicateIndex(threshold=1.0)
    text = _text(5)
    index.add("a", text)
    assert index.query(text + "!!") == "a"
    assert index.query(_change_word(text, 3)) is None


def test_many_rows_grow_signature_blocks():
    index = NearDuplicateIndex(num_perm=32)
    texts = [_text(seed, words=20) for seed in range(5000)]  # crosses the 4096-row block size
    for i, text in enumerate(texts):
        index.add(str(i), text)
    assert len(index) == 5000
    assert index.query(texts[4500]) == "4500"


def test_signature_equals_datasketch_update_batch():
    index = NearDuplicateIndex(num_perm=64, seed=3)
    for text in (_text(1), "你好，世界。今天天气很好", "ab"):
        hashes = _shingle_hashes(normalize_for_dedup(text), 5)
        reference = MinHash(64, seed=3, scheme="affine32", hashfunc=int)
        reference.update_batch(hashes.tolist())
        assert np.array_equal(index._signature(text), reference.hashvalues)


def test_shingle_hashes_one_per_kgram():
    assert len(_shingle_hashes("abcdefg", 5)) == 3
    assert len(_shingle_hashes("abc", 5)) == 1
    assert len(set(_shingle_hashes("abcdefgh", 3).tolist())) == 6
    # A k-gram hashes the same wherever it sits, so shared text gives shared hashes.
    assert _shingle_hashes("xxabcde", 5)[2] == _shingle_hashes("abcdeyy", 5)[0]


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"threshold": -0.2},
                                    {"num_perm": 8}, {"shingle_size": 0}])
def test_bad_parameters_raise_user_error(kwargs):
    with pytest.raises(UserError) as err:
        NearDuplicateIndex(**kwargs)
    assert "fix:" in str(err.value)


@pytest.mark.parametrize("a, b", [("2.5 mg", "25 mg"), ("1-2 tablets", "12 tablets"), ("-5", "5"),
                                  ("temperature -5 degrees", "temperature 5 degrees"), ("1/2 dose", "12 dose"),
                                  ("at 10:30", "at 1030"), ("50% of patients", "50 of patients"),
                                  ("1,000 units", "1000 units"), ("+3 points", "3 points"),
                                  ("剂量2.5毫克", "剂量25毫克"), ("２．５ｍｇ", "25mg")])
def test_exact_key_keeps_number_signs_and_separators(a, b):
    assert exact_key(a) != exact_key(b)
    assert exact_key(a) != exact_key(b + "\u3002")       # the non-ASCII path agrees


def test_number_marks_survive_formatting_changes():
    assert exact_key("2.5 mg") == exact_key("2 . 5 MG!")
    assert exact_key("1-2 tablets") == exact_key("1 – 2 tablets")       # an en dash is a hyphen here
    assert exact_key("２．５ｍｇ") == exact_key("2.5 mg")
    assert exact_key("COVID-19 test") == exact_key("covid 19 test")   # a hyphen after a letter is no sign
    assert normalize_for_dedup("Give -5, then 2.5 mg (1-2 times)") == "give-5then2.5mg1-2times"
