"""Blinded human review: export, fill in, import, unblind; and the errors a rater can cause."""

from __future__ import annotations

import csv
import json

import pytest

from domaintune.data.agree import cohen_kappa
from domaintune.errors import UserError
from domaintune.eval.review import CRITERIA, export_review, import_review

SCORE_COLUMNS = [f"response_{n}_{c}" for n in (1, 2) for c in CRITERIA]


def make_rows(n: int = 10) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Question {i}?\nSecond line, with a comma.",
             "reference": f"ref {i}", "output_a": f"base answer {i}", "output_b": f"tuned answer {i}"}
            for i in range(n)]


def read_sheet(path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def write_sheet(path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def fill(sheet: list[dict], key: dict, rater: str, score) -> list[dict]:
    """Score every item: score(item_id, model 'A' or 'B', criterion) -> int or str."""
    out = []
    for row in sheet:
        row = dict(row, rater=rater)
        sides = key["items"][row["id"]]
        for n in (1, 2):
            for crit in CRITERIA:
                row[f"response_{n}_{crit}"] = score(row["id"], sides[f"response_{n}"], crit)
        out.append(row)
    return out


@pytest.fixture
def exported(tmp_path):
    paths = export_review(make_rows(), tmp_path / "review", seed=3, names=("base", "tuned"))
    key = json.loads(paths["key"].read_text(encoding="utf-8"))
    return paths, key, read_sheet(paths["csv"])


# --- export -----------------------------------------------------------------------------------

def test_export_is_blinded_balanced_and_seeded(exported, tmp_path):
    paths, key, sheet = exported
    assert set(paths) == {"csv", "html", "key", "rubric"} and all(p.exists() for p in paths.values())
    assert paths["csv"].read_bytes().startswith(b"\xef\xbb\xbfid,")  # BOM, so Excel reads UTF-8
    assert [r["id"] for r in sheet] == [f"q{i}" for i in range(10)]
    assert list(sheet[0])[:6] == ["id", "prompt", "reference", "response_1", "response_2", "rater"]
    assert all(r[c] == "" for r in sheet for c in SCORE_COLUMNS)
    for row in sheet:  # the key says where each model's answer went
        sides = key["items"][row["id"]]
        i = row["id"][1:]
        assert row["response_1"] == ("base" if sides["response_1"] == "A" else "tuned") + f" answer {i}"
    a_first = sum(v["response_1"] == "A" for v in key["items"].values())
    assert a_first == 5  # each model is Response 1 for half the items
    assert key["names"] == {"A": "base", "B": "tuned"} and key["criteria"] == list(CRITERIA)
    again = export_review(make_rows(), tmp_path / "again", seed=3)
    assert json.loads(again["key"].read_text())["items"] == key["items"]
    other = export_review(make_rows(), tmp_path / "other", seed=4)
    assert json.loads(other["key"].read_text())["items"] != key["items"]


def test_export_html_is_self_contained_blinded_and_escaped(tmp_path):
    rows = make_rows(2)
    rows[0]["output_a"] = "<script>alert(1)</script>"
    paths = export_review(rows, tmp_path, names=("base-model", "tuned-model"))
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("class='card'") == 2 and "Response 1" in page and "Response 2" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "base-model" not in page and "tuned-model" not in page and "src=" not in page
    for crit in CRITERIA:
        assert crit in page and crit in paths["rubric"].read_text(encoding="utf-8")


def test_export_guards_cells_against_spreadsheet_formulas(tmp_path):
    rows = make_rows(1)
    rows[0].update(output_a="=HYPERLINK(\"http://x\")", output_b="- a bullet list", prompt="-1+2")
    sheet = read_sheet(export_review(rows, tmp_path)["csv"])[0]
    assert "'=HYPERLINK(\"http://x\")" in (sheet["response_1"], sheet["response_2"])
    assert "- a bullet list" in (sheet["response_1"], sheet["response_2"])
    assert sheet["prompt"] == "'-1+2"


def test_export_rejects_bad_rows(tmp_path):
    with pytest.raises(UserError, match="no items"):
        export_review([], tmp_path)
    with pytest.raises(UserError, match="lacks \\['output_b'\\]"):
        export_review([{"id": 1, "prompt": "p", "output_a": "a"}], tmp_path)
    with pytest.raises(UserError, match="repeated id 'x'"):
        export_review([dict(make_rows(1)[0], id="x"), dict(make_rows(1)[0], id="x")], tmp_path)


# --- round trip -------------------------------------------------------------------------------

def test_round_trip_two_raters(exported, tmp_path):
    paths, key, sheet = exported
    # Alice: tuned (B) is right everywhere, base (A) only on the first 3 items; fit is 2 for both.
    def alice(item, model, crit):
        if crit == "fit_to_user":
            return 2
        return 3 if model == "B" or int(item[1:]) < 3 else 1

    def bob(item, model, crit):  # agrees with Alice except on q9, where he scores A higher
        return 3 if item == "q9" and model == "A" else (1 if item == "q9" else alice(item, model, crit))

    a_path = write_sheet(tmp_path / "alice.csv", fill(sheet, key, "alice", alice))
    b_path = write_sheet(tmp_path / "bob.csv", fill(sheet, key, "bob", bob))
    out = import_review([a_path, b_path], paths["key"])
    assert out["raters"] == ["alice", "bob"] and out["n_ratings"] == 20 and out["n_items"] == 10
    assert out["names"] == {"A": "base", "B": "tuned"}
    # Correctness of A: Alice 3 x 3 + 7 x 1 = 16; Bob the same but q9 = 3: 18. Mean over 20 ratings.
    assert out["means"]["correctness"]["A"] == pytest.approx((16 + 18) / 20)
    assert out["means"]["correctness"]["B"] == pytest.approx((30 + 28) / 20)
    assert out["means"]["fit_to_user"]["A"] == pytest.approx((20 + 21) / 20)  # Bob gives A a 3 on q9
    # Per item (sum of criteria, mean over raters): q0-q2 tie, q3-q8 B wins, q9 A wins (Bob 9 vs 3, Alice 4 vs 8).
    pref = out["preference"]
    assert (pref["wins_b"], pref["wins_a"], pref["ties"]) == (6, 1, 3)
    assert pref["sign_test"]["p_value"] == pytest.approx(2 * (1 + 7) / 2 ** 7)
    assert pref["verdict"] == "tuned preferred on 6 of 10 items, base on 1, 3 ties (sign test p = 0.12)"
    # Agreement reuses Cohen's kappa: the preference labels per item from each rater.
    alice_pref = ["tie"] * 3 + ["B"] * 7
    bob_pref = ["tie"] * 3 + ["B"] * 6 + ["A"]
    agreement = out["agreement"]
    assert agreement["statistic"] == "cohen" and agreement["n_items"] == 10
    assert agreement["kappa"]["preference"] == pytest.approx(cohen_kappa(alice_pref, bob_pref))
    assert set(agreement["kappa"]) == {*CRITERIA, "preference"}


def test_one_sheet_with_three_raters_uses_fleiss_and_rater_from_filename(exported, tmp_path):
    paths, key, sheet = exported
    rows = []
    for name, bias in (("r1", 0), ("r2", 0), ("r3", 1)):
        rows += fill(sheet, key, name, lambda i, m, c, b=bias: 3 if m == "B" else 1 + b * (int(i[1:]) % 2))
    combined = write_sheet(tmp_path / "all.csv", rows)
    out = import_review([combined], paths["key"])
    assert out["raters"] == ["r1", "r2", "r3"] and out["agreement"]["statistic"] == "fleiss"
    assert out["preference"]["wins_b"] == 10
    unnamed = write_sheet(tmp_path / "carol.csv", fill(sheet, key, "", lambda i, m, c: 2))
    solo = import_review([unnamed], paths["key"])
    assert solo["raters"] == ["carol"] and solo["agreement"] is None
    assert solo["preference"]["ties"] == 10


def test_unscored_items_are_skipped(exported, tmp_path):
    paths, key, sheet = exported
    rows = fill(sheet, key, "alice", lambda i, m, c: "" if i in ("q0", "q1") else 2)
    out = import_review([write_sheet(tmp_path / "a.csv", rows)], paths["key"])
    assert out["n_items"] == 8 and {p["id"] for p in out["per_item"]} == {f"q{i}" for i in range(2, 10)}


# --- bad input --------------------------------------------------------------------------------

def test_bad_score_names_file_and_line(exported, tmp_path):
    paths, key, sheet = exported
    rows = fill(sheet, key, "alice", lambda i, m, c: 4 if i == "q2" and c == "correctness" else 2)
    path = write_sheet(tmp_path / "a.csv", rows)
    with pytest.raises(UserError) as err:
        import_review([path], paths["key"])
    # Each prompt spans two lines, so q2 starts on line 1 + 2 * 2 + 1 = 6.
    assert str(err.value).startswith(f"{path}:6: response_1_correctness is '4', expected 1, 2 or 3")
    assert err.value.line == 6


@pytest.mark.parametrize(("score", "message"), [
    (lambda i, m, c: "good", "is 'good'"),
    (lambda i, m, c: "" if c == "fit_to_user" else 2, "is '', expected 1, 2 or 3"),
    (lambda i, m, c: 2.5, "is '2.5'"),
])
def test_bad_and_partial_scores_are_errors(exported, tmp_path, score, message):
    paths, key, sheet = exported
    path = write_sheet(tmp_path / "a.csv", fill(sheet, key, "alice", score))
    with pytest.raises(UserError, match=message):
        import_review([path], paths["key"])


def test_unknown_id_duplicate_missing_column_and_empty(exported, tmp_path):
    paths, key, sheet = exported
    rows = fill(sheet, key, "alice", lambda i, m, c: 2)
    bad_id = write_sheet(tmp_path / "id.csv", [dict(rows[0], id="zz")])
    with pytest.raises(UserError, match="'zz' is not in the review key"):
        import_review([bad_id], paths["key"])
    twice = write_sheet(tmp_path / "twice.csv", rows + rows[:1])
    with pytest.raises(UserError, match="rater 'alice' scores item 'q0' twice"):
        import_review([twice], paths["key"])
    no_col = write_sheet(tmp_path / "nocol.csv", [{k: v for k, v in r.items() if k != "response_2_fit_to_user"}
                                                  for r in rows])
    with pytest.raises(UserError, match="missing column"):
        import_review([no_col], paths["key"])
    with pytest.raises(UserError, match="no scores found"):
        import_review([str(paths["csv"])], paths["key"])
    with pytest.raises(UserError, match="review sheet not found"):
        import_review([str(tmp_path / "nope.csv")], paths["key"])


def test_bad_key_is_user_error(exported, tmp_path):
    _, _, sheet = exported
    sheet_path = write_sheet(tmp_path / "s.csv", sheet)
    with pytest.raises(UserError, match="review key not found"):
        import_review([sheet_path], tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"items": {"q0": {"response_1": "A", "response_2": "A"}}}')
    with pytest.raises(UserError, match="not a review key"):
        import_review([sheet_path], bad)
    bad.write_text("not json")
    with pytest.raises(UserError, match="not a review key"):
        import_review([sheet_path], bad)
