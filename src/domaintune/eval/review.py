"""Blinded human review of two models: `domaintune review export` and `domaintune review import`.

Metrics miss what a domain expert sees. `export_review` writes a sheet of test items, each with
the prompt, the reference and the two models' answers as "Response 1" and "Response 2" in a
seeded random order (balanced: each model is Response 1 for half the items), so raters cannot
tell which model wrote what. Raters score each response 1-3 on three criteria in review.csv
(review.html shows the same items, readable offline). The key that unblinds the sheet goes into
review_key.json, which raters should not see.

`import_review` reads the filled sheets (one per rater, or one with a rater column), checks
every score, unblinds, and reports per-criterion means, the A/B preference per item with a sign
test, and inter-rater agreement (Cohen's kappa for two raters, Fleiss' for more, from
`domaintune.data.agree`).

    paths = export_review(rows, "review/", names=("base", "tuned"))
    summary = import_review(["review/alice.csv", "review/bob.csv"], paths["key"])
"""

from __future__ import annotations

import csv
import html
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from domaintune.data.agree import cohen_kappa, fleiss_kappa
from domaintune.errors import UserError
from domaintune.eval.stats import format_p, sign_test

__all__ = ["CRITERIA", "SCORES", "export_review", "import_review"]

# criterion -> (question, what 1, 2 and 3 mean)
CRITERIA = {
    "correctness": ("Is the answer right, with no factual or logical errors?",
                    ("wrong or unsafe", "partly right, minor errors", "fully right")),
    "domain_expertise": ("Does it use the domain's knowledge and terms as an expert would?",
                         ("lay or misuses terms", "adequate", "expert")),
    "fit_to_user": ("Does it answer this user's question, at the right level and in a usable form?",
                    ("off target", "partly fits", "fits well")),
}
SCORES = (1, 2, 3)
_SIDES = ("response_1", "response_2")
_TEXT_COLUMNS = ("id", "prompt", "reference", "response_1", "response_2", "rater")
_SCORE_COLUMNS = tuple(f"{side}_{crit}" for side in _SIDES for crit in CRITERIA)
# Spreadsheets run a cell that starts with these as a formula; a leading "'" keeps it text.
_FORMULA_START = ("=", "+", "@", "\t", "\r")


def _cell(text: str) -> str:
    risky = text.startswith(_FORMULA_START) or (text.startswith("-") and text[1:2] not in ("", " "))
    return "'" + text if risky else text


def _check_rows(rows: Sequence[dict]) -> list[dict]:
    if not rows:
        raise UserError("no items to review", hint="pass at least one row with id, prompt, output_a, output_b")
    seen: set[str] = set()
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "prompt", "output_a", "output_b") if k not in row]
        if missing:
            raise UserError(f"review row {i} lacks {missing}", hint="each row needs id, prompt, output_a, output_b")
        item = str(row["id"]).strip()
        if not item or item in seen:
            raise UserError(f"review row {i} has an empty or repeated id {item!r}", hint="give each item a unique id")
        seen.add(item)
        out.append({"id": item, "prompt": str(row["prompt"]), "reference": str(row.get("reference") or ""),
                    "A": str(row["output_a"]), "B": str(row["output_b"])})
    return out


def _rubric_markdown() -> str:
    lines = ["# Review rubric", "",
             "Score each response 1, 2 or 3 on every criterion (3 is best). Judge the responses on",
             "their own merits; their order is random. Leave all scores of an item empty to skip it.", "",
             "| criterion | question | 1 | 2 | 3 |", "|---|---|---|---|---|"]
    lines += [f"| {crit} | {q} | {' | '.join(levels)} |" for crit, (q, levels) in CRITERIA.items()]
    return "\n".join(lines) + "\n"


def export_review(rows: Sequence[dict], out_dir: str | Path, *, seed: int = 0,
                  names: tuple[str, str] = ("A", "B")) -> dict[str, Path]:
    """Write a blinded review sheet (CSV and HTML), its rubric, and the key that unblinds it.

    Args:
        rows: one dict per item with "id", "prompt", "output_a", "output_b" and optionally
            "reference".
        out_dir: the folder to write to (created if missing).
        seed: seed of the Response 1/2 order; the same seed gives the same sheet.
        names: display names of model A and model B, recorded in the key.

    Returns:
        {"csv": review.csv, "html": review.html, "rubric": review_rubric.md, "key": review_key.json}.

    Raises:
        UserError: no rows, a row lacks a field, or ids are empty or repeated.

    Example:
        >>> rows = [{"id": "q1", "prompt": "ICD-10 for type 2 diabetes?", "reference": "E11",
        ...          "output_a": "E10", "output_b": "E11"}]
        >>> sorted(export_review(rows, tmp_path, names=("base", "tuned")))  # doctest: +SKIP
        ['csv', 'html', 'key', 'rubric']
    """
    items = _check_rows(rows)
    flips = [i % 2 == 1 for i in range(len(items))]  # True: B is Response 1
    random.Random(seed).shuffle(flips)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = {item["id"]: ("B", "A") if flip else ("A", "B") for item, flip in zip(items, flips)}
    paths = {"csv": out / "review.csv", "html": out / "review.html", "rubric": out / "review_rubric.md",
             "key": out / "review_key.json"}
    # A BOM makes Excel read the sheet as UTF-8 (Chinese prompts would be garbled otherwise).
    with paths["csv"].open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*_TEXT_COLUMNS, *_SCORE_COLUMNS, "comment"])
        for item in items:
            first, second = order[item["id"]]
            texts = (item["id"], item["prompt"], item["reference"], item[first], item[second], "")
            writer.writerow([_cell(t) for t in texts] + [""] * (len(_SCORE_COLUMNS) + 1))
    paths["html"].write_text(_html(items, order), encoding="utf-8")
    paths["rubric"].write_text(_rubric_markdown(), encoding="utf-8")
    key = {"version": 1, "seed": seed, "names": {"A": names[0], "B": names[1]},
           "criteria": list(CRITERIA), "scores": list(SCORES),
           "items": {i: {"response_1": a, "response_2": b} for i, (a, b) in order.items()}}
    paths["key"].write_text(json.dumps(key, ensure_ascii=False, indent=2), encoding="utf-8")
    return paths


_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
.card{border:1px solid #ccc;border-radius:8px;padding:1rem;margin:1.5rem 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.text{white-space:pre-wrap;background:#f6f6f6;padding:.6rem;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}
h3{margin:.2rem 0}.small{color:#666;font-size:.9em}"""


def _html(items: list[dict], order: dict[str, tuple[str, str]]) -> str:
    esc = html.escape
    rubric = "".join(f"<tr><td>{esc(c)}</td><td>{esc(q)}</td>" + "".join(f"<td>{s}: {esc(t)}</td>"
                     for s, t in zip(SCORES, levels)) + "</tr>" for c, (q, levels) in CRITERIA.items())
    cards = []
    for item in items:
        responses = "".join(
            f"<div><h3>Response {n}</h3><div class='text'>{esc(item[side])}</div>"
            f"<p class='small'>score in review.csv: {', '.join(f'response_{n}_{c}' for c in CRITERIA)}</p></div>"
            for n, side in enumerate(order[item["id"]], start=1))
        reference = (f"<h3>Reference</h3><div class='text'>{esc(item['reference'])}</div>"
                     if item["reference"] else "")
        cards.append(f"<div class='card'><h2>Item {esc(item['id'])}</h2><h3>Prompt</h3>"
                     f"<div class='text'>{esc(item['prompt'])}</div>{reference}"
                     f"<div class='pair'>{responses}</div></div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Blinded review</title>"
            f"<style>{_CSS}</style></head><body><h1>Blinded review ({len(items)} items)</h1>"
            f"<p>Score each response 1-3 on every criterion in review.csv (fill in your name in the rater "
            f"column). The order of the responses is random.</p><table><tr><th>criterion</th><th>question</th>"
            f"<th colspan='3'>scores</th></tr>{rubric}</table>{''.join(cards)}</body></html>")


def _load_key(key_path: str | Path) -> dict:
    hint = "pass the review_key.json written by export"
    try:
        key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("review key not found", file=str(key_path), hint=hint) from None
    except ValueError:  # invalid JSON or not UTF-8
        key = None
    items = key.get("items") if isinstance(key, dict) else None
    if not isinstance(items, dict) or not all(
            isinstance(v, dict) and sorted(v.get(s) or "" for s in _SIDES) == ["A", "B"] for v in items.values()):
        raise UserError("not a review key", file=str(key_path), hint=hint)
    return key


def _score(path: str, line: int, column: str, raw: str) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if value not in SCORES:
        raise UserError(f"{column} is {raw!r}, expected 1, 2 or 3", file=path, line=line,
                        hint="score every criterion 1-3, or leave all of an item's scores empty to skip it")
    return int(value)


def _read_sheet(path: str, key: dict) -> list[dict]:
    """Ratings in one filled sheet: {rater, id, A: {crit: score}, B: {...}, line}."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in ("id", *_SCORE_COLUMNS) if c not in header]
            if missing:
                raise UserError(f"missing column(s) {missing}", file=path, line=1,
                                hint="fill in the review.csv written by export without renaming its columns")
            col = {name: header.index(name) for name in header}
            ratings, line = [], reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num  # a quoted cell may span several lines
                rating = _parse_row(path, start, row, col, key)
                if rating is not None:
                    ratings.append(rating)
    except FileNotFoundError:
        raise UserError("review sheet not found", file=path, hint="check the path") from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", file=path, hint="save the sheet as UTF-8 CSV") from None
    except csv.Error as err:
        raise UserError(f"not a valid CSV: {err}", file=path, line=reader.line_num) from None
    return ratings


def _parse_row(path: str, line: int, row: list[str], col: dict[str, int], key: dict) -> dict | None:
    cells = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
    if not any(cells.values()):
        return None
    item = cells["id"]
    if item not in key["items"]:
        raise UserError(f"item id {item!r} is not in the review key", file=path, line=line,
                        hint="use the key written together with this sheet")
    raw = {c: cells[c] for c in _SCORE_COLUMNS}
    if not any(raw.values()):
        return None  # the rater skipped this item
    scores = {c: _score(path, line, c, v) for c, v in raw.items()}
    rater = cells.get("rater") or Path(path).stem
    sides = key["items"][item]
    rating = {"rater": rater, "id": item, "line": line}
    for side in _SIDES:
        rating[sides[side]] = {crit: scores[f"{side}_{crit}"] for crit in CRITERIA}
    return rating


def import_review(csv_paths: Sequence[str | Path], key_path: str | Path) -> dict:
    """Read filled review sheets, unblind them, and summarize A against B.

    A sheet's rater is its "rater" column, or the file name when that is empty. An item whose
    scores are all empty is skipped; a partly scored item is an error.

    Args:
        csv_paths: filled copies of review.csv (one per rater, or one with a rater column).
        key_path: the review_key.json that export wrote.

    Returns:
        A JSON-ready dict: names, raters, n_ratings, n_items, means ({criterion or "total":
        {"A": mean, "B": mean}}, total being the sum of the three criteria, 3-9), preference
        (wins_b, wins_a, ties, sign_test, verdict), per_item, and agreement (kappa per criterion
        and for the preference, over items every rater scored; None with one rater).

    Raises:
        UserError: with file and line, for a missing column, unknown item id, a score other
            than 1-3, a partly scored item, or the same rater scoring an item twice.

    Example:
        >>> summary = import_review(["alice.csv", "bob.csv"], "review_key.json")  # doctest: +SKIP
        >>> summary["preference"]["verdict"]  # doctest: +SKIP
        'tuned preferred on 14 of 20 items, base on 4, 2 ties (sign test p = 0.031)'
    """
    key = _load_key(key_path)
    ratings: list[dict] = []
    seen: dict[tuple[str, str], str] = {}
    for path in map(str, csv_paths):
        for r in _read_sheet(path, key):
            if (r["rater"], r["id"]) in seen:
                raise UserError(f"rater {r['rater']!r} scores item {r['id']!r} twice", file=path, line=r["line"],
                                hint=f"keep one row per rater and item (first seen in {seen[(r['rater'], r['id'])]})")
            seen[(r["rater"], r["id"])] = path
            ratings.append(r)
    if not ratings:
        raise UserError("no scores found in the review sheets", hint="fill in the score columns of review.csv")
    names = key.get("names", {"A": "A", "B": "B"})
    raters = sorted({r["rater"] for r in ratings})
    per_item = _per_item(ratings)
    return {"names": names, "raters": raters, "n_ratings": len(ratings), "n_items": len(per_item),
            "means": _means(ratings), "preference": _preference(per_item, names), "per_item": per_item,
            "agreement": _agreement(ratings, raters)}


def _total(scores: dict[str, int]) -> int:
    return sum(scores.values())


def _means(ratings: list[dict]) -> dict[str, dict[str, float]]:
    means = {crit: {side: float(np.mean([r[side][crit] for r in ratings])) for side in "AB"} for crit in CRITERIA}
    means["total"] = {side: float(np.mean([_total(r[side]) for r in ratings])) for side in "AB"}
    return means


def _per_item(ratings: list[dict]) -> list[dict]:
    """Per item, the mean total of A and B over its raters and which one is preferred."""
    by_item: dict[str, list[dict]] = {}
    for r in ratings:
        by_item.setdefault(r["id"], []).append(r)
    out = []
    for item, rs in by_item.items():
        a, b = (float(np.mean([_total(r[side]) for r in rs])) for side in "AB")
        out.append({"id": item, "n_raters": len(rs), "A": a, "B": b,
                    "preferred": "B" if b > a else "A" if a > b else "tie"})
    return out


def _preference(per_item: list[dict], names: dict[str, str]) -> dict:
    wins_b = sum(p["preferred"] == "B" for p in per_item)
    wins_a = sum(p["preferred"] == "A" for p in per_item)
    ties = len(per_item) - wins_a - wins_b
    test = sign_test(wins_b, wins_a)
    leader, other, lead, trail = ("B", "A", wins_b, wins_a) if wins_b >= wins_a else ("A", "B", wins_a, wins_b)
    text = (f"{names[leader]} preferred on {lead} of {len(per_item)} items, {names[other]} on {trail}, "
            f"{ties} tie{'s' if ties != 1 else ''} (sign test {format_p(test.p_value)})")
    return {"wins_b": wins_b, "wins_a": wins_a, "ties": ties, "sign_test": test.to_dict(), "verdict": text}


def _kappa(grid: np.ndarray) -> float | None:
    """Cohen's kappa for two raters (columns), Fleiss' for more; None when undefined."""
    if grid.shape[1] == 2:
        value = cohen_kappa(grid[:, 0], grid[:, 1])
    else:
        _, codes = np.unique(grid, return_inverse=True)
        codes = codes.reshape(grid.shape)
        counts = np.stack([np.bincount(row, minlength=codes.max() + 1) for row in codes])
        value = fleiss_kappa(counts)
    return None if math.isnan(value) else float(value)


def _agreement(ratings: list[dict], raters: list[str]) -> dict | None:
    """Kappa per criterion (units: each item's two responses) and for the preferred side."""
    if len(raters) < 2:
        return None
    by = {(r["id"], r["rater"]): r for r in ratings}
    common = sorted({r["id"] for r in ratings if all((r["id"], x) in by for x in raters)})
    if not common:
        return {"statistic": "cohen" if len(raters) == 2 else "fleiss", "n_items": 0, "kappa": {}}
    kappa = {}
    for crit in CRITERIA:
        grid = [[str(by[(i, x)][side][crit]) for x in raters] for i in common for side in "AB"]
        kappa[crit] = _kappa(np.array(grid))
    pref = [[_prefers(by[(i, x)]) for x in raters] for i in common]
    kappa["preference"] = _kappa(np.array(pref))
    return {"statistic": "cohen" if len(raters) == 2 else "fleiss", "n_items": len(common), "kappa": kappa}


def _prefers(rating: dict) -> str:
    a, b = _total(rating["A"]), _total(rating["B"])
    return "B" if b > a else "A" if a > b else "tie"
