"""Annotator agreement: kappa formulas against published answers, CSV forms, and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.data.agree import AgreementReport, agreement, cohen_kappa, fleiss_kappa, read_labels
from domaintune.errors import UserError

# Wikipedia, "Cohen's kappa", worked example: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15.
WIKI_COHEN_A = ["yes"] * 25 + ["no"] * 25
WIKI_COHEN_B = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15

# Wikipedia, "Fleiss' kappa", worked example: 10 items, 5 categories, 14 raters -> 0.210.
WIKI_FLEISS = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def write(tmp_path, text: str, name: str = "labels.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def wide_csv(tmp_path, raters: list[list[str]]) -> str:
    names = [f"r{j}" for j in range(len(raters))]
    lines = ["item," + ",".join(names)]
    lines += [f"i{i}," + ",".join(col[i] for col in raters) for i in range(len(raters[0]))]
    return write(tmp_path, "\n".join(lines) + "\n")


# --- the formulas ---------------------------------------------------------------------------

def test_cohen_wikipedia_example():
    assert cohen_kappa(WIKI_COHEN_A, WIKI_COHEN_B) == pytest.approx(0.4)


def test_fleiss_wikipedia_example():
    assert fleiss_kappa(WIKI_FLEISS) == pytest.approx(0.210, abs=5e-4)


def test_perfect_agreement_is_one():
    labels = ["a", "b", "c", "a", "b"]
    assert cohen_kappa(labels, labels) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]])) == pytest.approx(1.0)


def test_chance_level_is_zero():
    # Rater b's label is independent of a's, with the exact product of the marginals.
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "x", "y"]) == pytest.approx(0.0)
    assert fleiss_kappa(np.array([[2, 0], [1, 1], [1, 1], [0, 2]])) == pytest.approx(0.0)


def test_systematic_disagreement_is_negative():
    assert cohen_kappa(["x", "y"] * 5, ["y", "x"] * 5) == pytest.approx(-1.0)


def test_single_category_is_undefined():
    assert math.isnan(cohen_kappa(["a"] * 4, ["a"] * 4))
    assert math.isnan(fleiss_kappa(np.array([[3, 0], [3, 0]])))


@pytest.mark.parametrize("counts", [[[1, 1], [2, 0], [3, 0]], [[1, 0], [1, 0]], [[-1, 3]], [1, 2], []])
def test_fleiss_rejects_bad_tables(counts):
    with pytest.raises(ValueError):
        fleiss_kappa(np.array(counts))


def test_cohen_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        cohen_kappa([], [])


labels_st = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=60)


@given(labels_st)
def test_cohen_is_symmetric_bounded_and_label_blind(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    k = cohen_kappa(a, b)
    if math.isnan(k):
        assert set(a) == set(b) and len(set(a)) == 1
        return
    assert -1.0 - 1e-9 <= k <= 1.0 + 1e-9
    assert cohen_kappa(b, a) == pytest.approx(k)
    rename = {"a": "z", "b": "y", "c": "x", "d": "w"}
    assert cohen_kappa([rename[x] for x in a], [rename[x] for x in b]) == pytest.approx(k)


@given(st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=1, max_size=30))
def test_fleiss_is_order_free_and_at_most_one(rows):
    counts = np.array([r + [6 - sum(r)] if sum(r) <= 6 else [0, 0, 0, 6] for r in rows])
    k = fleiss_kappa(counts)
    if math.isnan(k):
        assert (counts.sum(axis=0) > 0).sum() == 1
        return
    assert k <= 1.0 + 1e-9
    assert fleiss_kappa(counts[::-1]) == pytest.approx(k)
    assert fleiss_kappa(counts[:, ::-1]) == pytest.approx(k)


def test_cohen_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.choice(["p", "q", "r"], size=40)
        b = np.where(rng.random(40) < 0.6, a, rng.choice(["p", "q", "r"], size=40))
        assert cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b))


# --- reading the CSV ------------------------------------------------------------------------

def test_long_and_wide_forms_read_the_same(tmp_path):
    long_path = write(tmp_path, "Rater,Item,Label,note\nann,1,yes,x\nbob,1,no,\nann,2,no,\nbob,2,no,\n", "l.csv")
    wide_path = write(tmp_path, "id,ann,bob\n1,yes,no\n2,no,no\n", "w.csv")
    long, wide = read_labels(long_path), read_labels(wide_path)
    assert long.items == wide.items == ("1", "2")
    assert long.raters == wide.raters == ("ann", "bob")
    assert long.labels.tolist() == wide.labels.tolist() == [["yes", "no"], ["no", "no"]]


def test_bom_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffitem,a,b\n\n1,x,x\n2,y,x\n".encode())
    table = read_labels(str(path))
    assert table.items == ("1", "2") and table.lines == (3, 4)


@pytest.mark.parametrize("text, line, needle", [
    ("item,rater,label\n1,ann,yes\n1,ann,no\n", 3, "twice"),
    ("item,rater,label\n1,ann\n", 2, "expected 3 fields"),
    ("item,a,b\n1,x\n", 2, "expected 3 fields"),
    ("item,a,a\n1,x,y\n", 1, "distinct"),
    ("item,a,b\n1,x,y\n1,y,y\n", 3, "repeated"),
])
def test_bad_files_name_the_line(tmp_path, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        read_labels(path)
    assert err.value.line == line and err.value.file == path
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_labels(str(tmp_path / "nope.csv"))
    with pytest.raises(UserError, match="empty"):
        read_labels(write(tmp_path, "\n\n"))
    (tmp_path / "bin.csv").write_bytes(b"item,a,b\n1,\xff,x\n")
    with pytest.raises(UserError, match="UTF-8"):
        read_labels(str(tmp_path / "bin.csv"))


# --- agreement() ----------------------------------------------------------------------------

def test_two_raters_use_cohen(tmp_path):
    report = agreement(wide_csv(tmp_path, [WIKI_COHEN_A, WIKI_COHEN_B]), threshold=0.35)
    assert report.statistic == "cohen" and report.n_raters == 2 and report.n_items == 50
    assert report.cohen_kappa == pytest.approx(0.4) and report.kappa == report.cohen_kappa
    assert report.observed_agreement == pytest.approx(0.7)
    assert report.categories == ["no", "yes"]
    assert report.passed
    assert not agreement(wide_csv(tmp_path, [WIKI_COHEN_A, WIKI_COHEN_B])).passed  # default 0.6


def test_more_raters_use_fleiss_and_list_pairs(tmp_path):
    a = ["x", "y", "z", "x", "y", "z", "x", "y"]
    b = ["x", "y", "z", "x", "y", "z", "y", "y"]
    c = ["x", "y", "z", "y", "y", "z", "x", "x"]
    report = agreement(wide_csv(tmp_path, [a, b, c]))
    counts = np.array([[row.count(k) for k in "xyz"] for row in zip(a, b, c)])
    assert report.statistic == "fleiss" and report.cohen_kappa is None
    assert report.fleiss_kappa == pytest.approx(fleiss_kappa(counts))
    assert report.kappa == report.fleiss_kappa
    assert report.pairwise_cohen == {"r0|r1": pytest.approx(cohen_kappa(a, b)),
                                     "r0|r2": pytest.approx(cohen_kappa(a, c)),
                                     "r1|r2": pytest.approx(cohen_kappa(b, c))}
    assert report.passed == (report.fleiss_kappa >= 0.6)


def test_fleiss_report_reproduces_wikipedia_from_a_long_csv(tmp_path):
    lines = ["item,rater,label"]
    for i, row in enumerate(WIKI_FLEISS):
        raters = iter(range(14))
        lines += [f"q{i},r{next(raters)},c{j}" for j, n in enumerate(row) for _ in range(n)]
    report = agreement(write(tmp_path, "\n".join(lines) + "\n"))
    assert report.fleiss_kappa == pytest.approx(0.210, abs=5e-4)
    assert report.n_items == 10 and report.n_raters == 14 and not report.passed


def test_missing_label_names_the_item(tmp_path):
    path = write(tmp_path, "item,ann,bob\nq1,yes,yes\nq2,no,\nq3,,no\n")
    with pytest.raises(UserError) as err:
        agreement(path)
    assert err.value.line == 3 and "'q2'" in str(err.value) and "'bob'" in str(err.value)
    assert "2 item(s) incomplete" in str(err.value)


def test_one_rater_or_bad_threshold_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="at least 2 raters"):
        agreement(write(tmp_path, "item,ann\n1,x\n"))
    with pytest.raises(UserError, match="threshold"):
        agreement(wide_csv(tmp_path, [["x"], ["x"]]), threshold=1.5)


def test_undefined_kappa_fails_and_says_why(tmp_path):
    report = agreement(wide_csv(tmp_path, [["x"] * 3, ["x"] * 3]))
    assert math.isnan(report.kappa) and not report.passed
    assert report.to_dict()["kappa"] is None
    assert "undefined" in report.to_markdown()


def test_report_serializes(tmp_path):
    a, b, c = ["x", "y", "x", "y"], ["x", "y", "x", "x"], ["x", "y", "y", "y"]
    report = agreement(wide_csv(tmp_path, [a, b, c]), threshold=0.1)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["statistic"] == "fleiss" and data["passed"] is True
    assert data["kappa"] == pytest.approx(report.fleiss_kappa, abs=1e-6)
    assert set(data["pairwise_cohen"]) == {"r0|r1", "r0|r2", "r1|r2"}
    md = report.to_markdown()
    assert md.startswith("## Annotator agreement: PASS") and "r0 vs r2" in md
    assert isinstance(report, AgreementReport)
