"""Tests for domaintune.data.terms: loading, longest match, word boundaries, case, CJK, counts."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.terms import TermDict
from domaintune.errors import UserError

MED = {
    "myocardial infarction": ["heart attack", "MI"],
    "acute myocardial infarction": ["acute MI", "AMI"],
    "hypertension": ["high blood pressure", "HTN"],
    "心肌梗死": ["心梗", "心肌梗塞"],
    "急性心肌梗死": ["急性心梗"],
    "高血压": ["高血压病"],
    "ST段抬高型心肌梗死": ["STEMI"],
    "β受体阻滞剂": ["β-blocker", "beta blocker"],
}
TERMS = TermDict.from_mapping(MED)


def norm(text: str) -> str:
    return TERMS.normalize(text)[0]


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# --- loading ---------------------------------------------------------------------------------

def test_csv_with_header_and_several_rows_per_term(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "canonical,variant\n心肌梗死,心梗\n心肌梗死,心肌梗塞\n\n"
                                    "myocardial infarction,MI\n高血压\n")
    terms = TermDict.from_file(path)
    assert terms.terms == ["心肌梗死", "myocardial infarction", "高血压"]
    assert terms.normalize("心梗与心肌梗塞，MI")[0] == "心肌梗死与心肌梗死，myocardial infarction"


def test_csv_without_header_with_bom_and_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "\ufeff心肌梗死,心梗\n\"hypertension, essential\",HTN\n")
    terms = TermDict.from_file(path)
    assert terms.terms == ["心肌梗死", "hypertension, essential"]
    assert terms.normalize("HTN")[0] == "hypertension, essential"


def test_yaml_lists_scalars_and_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "心肌梗死: [心梗, 心肌梗塞]\n高血压: 高血压病\n糖尿病:\n"
                                     "myocardial infarction:\n  - heart attack\n  - MI\n")
    terms = TermDict.from_file(path)
    assert terms.terms == ["心肌梗死", "高血压", "糖尿病", "myocardial infarction"]
    assert terms.normalize("高血压病合并心梗")[0] == "高血压合并心肌梗死"


@pytest.mark.parametrize(("name", "content", "line", "fragment"), [
    ("t.csv", "a,b\nc,d,e\n", 2, "expected 'canonical,variant'"),
    ("t.csv", "a,b\n,d\n", 2, "expected 'canonical,variant'"),
    ("t.csv", "心肌梗死,心梗\n心绞痛,心梗\n", 2, "'心梗' is listed for both '心肌梗死' and '心绞痛'"),
    ("t.yaml", "a: [b\nc: d\n", 2, "bad YAML"),
    ("t.yaml", "- a\n- b\n", 1, "must map each canonical term"),
    ("t.yaml", "a: {b: c}\n", 1, "must be text or a list of text"),
    ("t.yml", "心肌梗死: [心梗]\n心绞痛:\n  - 胸痛\n  - 心梗\n", 4, "listed for both"),
])
def test_bad_file_reports_file_and_line(tmp_path: Path, name: str, content: str, line: int,
                                        fragment: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as err:
        TermDict.from_file(path)
    assert err.value.file == path
    assert err.value.line == line
    assert fragment in str(err.value)


def test_missing_wrong_suffix_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        TermDict.from_file(str(tmp_path / "none.csv"))
    with pytest.raises(UserError, match="must be .csv, .yaml or .yml"):
        TermDict.from_file(write(tmp_path, "t.json", "{}"))
    with pytest.raises(UserError, match="not UTF-8"):
        TermDict.from_file(write(tmp_path, "t.csv", "心肌梗死,心梗\n".encode("gbk")))


# --- conflicts -------------------------------------------------------------------------------

@pytest.mark.parametrize("mapping", [
    {"A": ["x"], "B": ["x"]},
    {"myocardial infarction": ["MI"], "mitral insufficiency": ["mi"]},  # case is ignored
    {"心肌梗死": ["心梗"], "心梗": ["心肌梗"]},  # a variant that is also a canonical term
    {"A": [""]},
])
def test_conflicting_or_empty_terms_rejected(mapping: dict) -> None:
    with pytest.raises(UserError):
        TermDict.from_mapping(mapping)


def test_same_variant_twice_under_one_term_is_fine() -> None:
    terms = TermDict.from_mapping({"心肌梗死": ["心梗", "心梗", "心肌梗死"]})
    assert terms.normalize("心梗")[0] == "心肌梗死"


# --- matching --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("急性心梗入院", "急性心肌梗死入院"),  # longest: 急性心梗, not 心梗
    ("患者心梗，既往心肌梗塞", "患者心肌梗死，既往心肌梗死"),  # CJK matches anywhere
    ("acute MI today", "acute myocardial infarction today"),
    ("AMI and MI", "acute myocardial infarction and myocardial infarction"),
    ("STEMI患者", "ST段抬高型心肌梗死患者"),
    ("Heart Attack, HEART ATTACK, heart attack", ", ".join(["myocardial infarction"] * 3)),
    ("high blood pressure (HTN)", "hypertension (hypertension)"),
    ("患者MI入院", "患者myocardial infarction入院"),
    ("use a β-blocker or Beta Blocker", "use a β受体阻滞剂 or β受体阻滞剂"),
])
def test_variants_replaced(text: str, want: str) -> None:
    assert norm(text) == want


@pytest.mark.parametrize("text", ["MINE", "admit", "MIx", "xMI", "MI_2", "HTNs", "heart attacks", "AMIGO"])
def test_ascii_terms_respect_word_boundaries(text: str) -> None:
    assert norm(text) == text


def test_boundary_rejection_does_not_hide_a_later_match() -> None:
    assert norm("xMI MI") == "xMI myocardial infarction"


def test_counts_cover_variants_and_canonical_terms() -> None:
    text, counts = TERMS.normalize("心梗，心肌梗死，Heart attack，MI，myocardial infarction，心梗")
    assert text == "心肌梗死，心肌梗死，myocardial infarction，myocardial infarction，myocardial infarction，心肌梗死"
    assert counts == Counter({
        ("心肌梗死", "心梗"): 2, ("心肌梗死", "心肌梗死"): 1,
        ("myocardial infarction", "heart attack"): 1, ("myocardial infarction", "MI"): 1,
        ("myocardial infarction", "myocardial infarction"): 1,
    })


def test_canonical_terms_are_kept_as_written() -> None:
    assert norm("Myocardial Infarction") == "Myocardial Infarction"


def test_text_without_terms_is_unchanged() -> None:
    text = "Patient stable, no complaints. 患者一般情况可，无不适。"
    out, counts = TERMS.normalize(text)
    assert out is text and counts == Counter()


def test_empty_dictionary() -> None:
    assert TermDict.from_mapping({}).normalize("心梗 MI") == ("心梗 MI", Counter())


def test_length_changing_lowercase_keeps_offsets() -> None:
    assert norm("İ心梗 MI") == "İ心肌梗死 myocardial infarction"


# --- property: same result as one plain alternation ------------------------------------------

def _reference(terms: dict, text: str) -> str:
    """Leftmost-longest matching with one IGNORECASE alternation: slow but obviously right."""
    forms = {v.lower(): c for c, vs in terms.items() for v in [c, *vs]}
    word = "[a-z0-9_]"

    def alt(form: str) -> str:
        before = f"(?<!{word})" if re.match(word, form) else ""
        after = f"(?!{word})" if re.match(word, form[-1]) else ""
        return before + re.escape(form) + after

    pattern = re.compile("|".join(alt(f) for f in sorted(forms, key=len, reverse=True)), re.IGNORECASE)

    def sub(m: re.Match) -> str:
        canonical = forms[m.group().lower()]
        return m.group() if m.group().lower() == canonical.lower() else canonical
    return pattern.sub(sub, text)


_PIECES = st.one_of(
    st.sampled_from([f for c, vs in MED.items() for f in [c, *vs]]),
    st.sampled_from(["Heart Attack", "mi", "Mi", "x", "_", "9", " ", "，", "急性", "心", "梗", "-", "ST",
                     "f1", "F12"]),
    st.text(alphabet="abmiMI 心梗急性 ", max_size=5),
)


# Past 24 anchor words the dictionary finds candidates by listing the text's words instead.
BIG = {**MED, **{f"filler{i} term": [f"f{i}"] for i in range(30)}}
BIG_TERMS = TermDict.from_mapping(BIG)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=10).map("".join))
def test_matches_reference_implementation(text: str) -> None:
    assert norm(text) == _reference(MED, text)
    assert BIG_TERMS.normalize(text)[0] == _reference(BIG, text)
