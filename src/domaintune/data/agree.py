"""Inter-annotator agreement for labelled data: `domaintune agree LABELS.csv`.

Before labels train or grade a model, check that the people who wrote them agree more than
chance would: Cohen's kappa for two raters (plus a pairwise table for more), Fleiss' kappa for
any number. The file passes when the kappa that fits it (Cohen for two raters, Fleiss for more)
reaches the threshold; 0.6 is the usual floor for "substantial" agreement (Landis and Koch).

The CSV comes in either of two shapes, told apart by the header:
- long: columns `item`, `rater`, `label` (any order, case-insensitive, other columns ignored),
  one row per (item, rater);
- wide: first column the item id, then one column per rater.

Every rater must label every item: an item with a missing label is an error that names it,
rather than a silent drop, because a gap in an annotation round is worth fixing and kappa
over a quietly shrunk set of items would overstate what was checked.

Run it:

    domaintune agree labels.csv --threshold 0.7
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domaintune.errors import UserError

__all__ = ["AgreementReport", "LabelTable", "agreement", "cohen_kappa", "fleiss_kappa", "read_labels"]

_LONG_COLUMNS = ("item", "rater", "label")


@dataclass(frozen=True)
class LabelTable:
    """Labels as an items x raters grid.

    Attributes:
        items: item ids, in first-seen order.
        raters: rater names, in first-seen order.
        labels: object array (items x raters) of label strings, None where a label is missing.
        lines: the 1-based CSV line where each item first appears (for error messages).
        path: the file the table was read from.
    """

    items: tuple[str, ...]
    raters: tuple[str, ...]
    labels: np.ndarray
    lines: tuple[int, ...]
    path: str = ""


@dataclass(frozen=True)
class AgreementReport:
    """What `agreement` found.

    Attributes:
        n_items: items labelled by every rater.
        n_raters: raters (columns of the wide form).
        categories: every label used, sorted.
        cohen_kappa: Cohen's kappa with exactly two raters, None with more.
        pairwise_cohen: Cohen's kappa for each pair of raters, keyed "a|b".
        fleiss_kappa: Fleiss' kappa over all raters (Scott's pi when there are two).
        observed_agreement: mean share of agreeing rater pairs per item.
        threshold: the kappa needed to pass.
        passed: whether the deciding kappa reached the threshold (False when it is undefined).
        statistic: "cohen" or "fleiss", the kappa that decided.
        path: the labels file.
    """

    n_items: int
    n_raters: int
    categories: list[str]
    cohen_kappa: float | None
    pairwise_cohen: dict[str, float] = field(default_factory=dict)
    fleiss_kappa: float = math.nan
    observed_agreement: float = math.nan
    threshold: float = 0.6
    passed: bool = False
    statistic: str = "cohen"
    path: str = ""

    @property
    def kappa(self) -> float:
        """The kappa that decided `passed`."""
        return self.cohen_kappa if self.statistic == "cohen" else self.fleiss_kappa

    def to_dict(self) -> dict:
        """A JSON-ready dict; undefined kappas (one category only) become None."""
        def clean(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(float(x), 6)
        return {
            "path": self.path, "n_items": self.n_items, "n_raters": self.n_raters,
            "categories": list(self.categories), "statistic": self.statistic,
            "kappa": clean(self.kappa), "cohen_kappa": clean(self.cohen_kappa),
            "pairwise_cohen": {k: clean(v) for k, v in self.pairwise_cohen.items()},
            "fleiss_kappa": clean(self.fleiss_kappa),
            "observed_agreement": clean(self.observed_agreement),
            "threshold": self.threshold, "passed": self.passed,
        }

    def to_markdown(self) -> str:
        """A short Markdown summary: the verdict, the statistics, and the pairwise table."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"## Annotator agreement: {verdict}", "",
            f"{self.n_items} items, {self.n_raters} raters, {len(self.categories)} categories "
            f"({', '.join(self.categories)})", "",
            "| statistic | value |", "|---|---|",
            f"| {self.statistic} kappa (decides, needs >= {self.threshold:g}) | {_fmt(self.kappa)} |",
            f"| Fleiss' kappa | {_fmt(self.fleiss_kappa)} |",
            f"| observed agreement | {_fmt(self.observed_agreement)} |",
        ]
        if len(self.pairwise_cohen) > 1:
            lines += ["", "| rater pair | Cohen's kappa |", "|---|---|"]
            lines += [f"| {pair.replace('|', ' vs ')} | {_fmt(k)} |" for pair, k in self.pairwise_cohen.items()]
        if math.isnan(self.kappa):
            lines += ["", "Kappa is undefined: every label is the same category, so chance agreement is 1."]
        return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "undefined" if x is None or math.isnan(x) else f"{x:.3f}"


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa between two raters' labels of the same items.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the share of items labelled alike and p_e the
    agreement expected if each rater drew labels independently from their own marginals.

    Args:
        a: the first rater's labels, one per item (any hashable, sortable values).
        b: the second rater's labels for the same items, in the same order.

    Returns:
        Kappa in [-1, 1]; NaN when both raters used one and the same category throughout
        (p_e = 1, kappa undefined).

    Raises:
        ValueError: if the sequences are empty or differ in length.

    Example:
        >>> round(cohen_kappa(["y", "y", "n", "n"], ["y", "n", "n", "n"]), 3)
        0.5
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two equal, non-empty label sequences, got {a.shape} and {b.shape}")
    categories, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    k = len(categories)
    joint = np.bincount(codes[:a.size] * k + codes[a.size:], minlength=k * k).reshape(k, k) / a.size
    p_observed = np.trace(joint)
    p_expected = joint.sum(axis=1) @ joint.sum(axis=0)
    if math.isclose(p_expected, 1.0):
        return math.nan
    return float((p_observed - p_expected) / (1.0 - p_expected))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a count table.

    Args:
        counts: items x categories; cell (i, j) is how many raters put item i in category j.
            Every row must sum to the same number of ratings n >= 2.

    Returns:
        Kappa (1 is perfect, 0 is chance level); NaN when all ratings fall in one category.

    Raises:
        ValueError: if the table is not 2-D, is empty, has negative cells, or its rows
            hold different numbers of ratings (or fewer than 2).

    Example:
        >>> fleiss_kappa(np.array([[2, 0], [0, 2], [1, 1], [1, 1]]))
        0.0
    """
    p_observed, p_expected = _fleiss_agreements(counts)
    if math.isclose(p_expected, 1.0):
        return math.nan
    return (p_observed - p_expected) / (1.0 - p_expected)


def _fleiss_agreements(counts: np.ndarray) -> tuple[float, float]:
    """Fleiss' observed agreement (mean share of agreeing rater pairs per item) and chance agreement."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.size == 0 or (counts < 0).any():
        raise ValueError(f"need a non-empty 2-D table of non-negative counts, got shape {counts.shape}")
    per_item = counts.sum(axis=1)
    n = per_item[0]
    if n < 2 or not np.all(per_item == n):
        raise ValueError("every item needs the same number of ratings, at least 2")
    p_item = (np.square(counts).sum(axis=1) - n) / (n * (n - 1))
    p_category = counts.sum(axis=0) / counts.sum()
    return float(p_item.mean()), float(np.square(p_category).sum())


def read_labels(path: str) -> LabelTable:
    """Read a labels CSV in long (item, rater, label) or wide (item, rater1, rater2, ...) form.

    Args:
        path: the CSV file (UTF-8, a BOM is fine).

    Returns:
        The labels as a `LabelTable`; an empty cell (wide form) is a missing label (None).

    Raises:
        UserError: naming the file and line, if the file is missing, empty, not UTF-8, has a
            row of the wrong width, an empty item id, a repeated rater column, or (long form)
            the same (item, rater) twice.

    Example:
        >>> table = read_labels("labels.csv")  # doctest: +SKIP
        >>> table.raters  # doctest: +SKIP
        ('alice', 'bob')
    """
    rows = _read_rows(path)
    if not rows:
        raise UserError("labels file is empty", file=path,
                        hint="write a header: item,rater,label (long) or item,<rater>,<rater>... (wide)")
    header = [h.strip() for h in rows[0][1]]
    lowered = [h.lower() for h in header]
    if all(col in lowered for col in _LONG_COLUMNS):
        return _read_long(path, rows, [lowered.index(col) for col in _LONG_COLUMNS])
    return _read_wide(path, rows, header)


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with the line each ends on."""
    rows: list[tuple[int, list[str]]] = []
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, row))
    except FileNotFoundError:
        raise UserError("labels file not found", file=path, hint="check the path") from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=path,
                        hint="save the CSV as UTF-8") from None
    except csv.Error as err:
        raise UserError(f"not a valid CSV: {err}", file=path, line=reader.line_num) from None
    return rows


def _read_long(path: str, rows: list[tuple[int, list[str]]], cols: list[int]) -> LabelTable:
    width = len(rows[0][1])
    cells: dict[tuple[str, str], str] = {}
    items: dict[str, int] = {}
    raters: dict[str, None] = {}
    for line, row in rows[1:]:
        if len(row) != width:
            raise UserError(f"expected {width} fields, got {len(row)}", file=path, line=line,
                            hint="quote fields that contain commas")
        item, rater, label = (row[c].strip() for c in cols)
        if not item or not rater:
            raise UserError("empty item or rater", file=path, line=line)
        if (item, rater) in cells:
            raise UserError(f"rater '{rater}' labels item '{item}' twice", file=path, line=line,
                            hint="keep one label per (item, rater)")
        cells[(item, rater)] = label
        items.setdefault(item, line)
        raters.setdefault(rater)
    grid = np.full((len(items), len(raters)), None, dtype=object)
    item_index = {item: i for i, item in enumerate(items)}
    rater_index = {rater: j for j, rater in enumerate(raters)}
    for (item, rater), label in cells.items():
        grid[item_index[item], rater_index[rater]] = label or None
    return LabelTable(tuple(items), tuple(raters), grid, tuple(items.values()), path)


def _read_wide(path: str, rows: list[tuple[int, list[str]]], header: list[str]) -> LabelTable:
    raters = header[1:]
    repeated = sorted({r for r in raters if raters.count(r) > 1})
    if repeated or not all(raters):
        raise UserError(f"rater columns must be named and distinct, got {header}", file=path, line=1,
                        hint="use a header like item,alice,bob or the long form item,rater,label")
    items, lines, grid = [], [], []
    seen: set[str] = set()
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise UserError(f"expected {len(header)} fields, got {len(row)}", file=path, line=line,
                            hint="leave a missing label as an empty field, not out")
        item = row[0].strip()
        if not item or item in seen:
            raise UserError(f"item id {item!r} is empty or repeated", file=path, line=line)
        seen.add(item)
        items.append(item)
        lines.append(line)
        grid.append([cell.strip() or None for cell in row[1:]])
    labels = np.array(grid, dtype=object).reshape(len(items), len(raters))
    return LabelTable(tuple(items), tuple(raters), labels, tuple(lines), path)


def _require_complete(table: LabelTable) -> None:
    missing = np.argwhere(np.equal(table.labels, None))
    if missing.size:
        i, j = missing[0]
        n_items = len({int(r) for r, _ in missing})
        raise UserError(f"item '{table.items[i]}' has no label from rater '{table.raters[j]}' "
                        f"({n_items} item(s) incomplete)", file=table.path, line=table.lines[i],
                        hint="every rater must label every item: fill the label or remove the item")


def _count_table(labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Categories and the items x categories count table of a complete label grid."""
    categories, codes = np.unique(labels.astype(str), return_inverse=True)
    codes = codes.reshape(labels.shape)
    counts = np.zeros((labels.shape[0], len(categories)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(labels.shape[0]), labels.shape[1]), codes.ravel()), 1)
    return categories.tolist(), counts


def agreement(path: str, threshold: float = 0.6) -> AgreementReport:
    """Measure how well the raters in a labels CSV agree, and whether that is enough.

    Args:
        path: the labels CSV (long or wide form, see `read_labels`).
        threshold: the kappa needed to pass (Cohen's for two raters, Fleiss' for more).

    Returns:
        An `AgreementReport`.

    Raises:
        UserError: if the file is malformed, has fewer than 2 raters or no items, or an item
            lacks a label from some rater.

    Example:
        >>> report = agreement("labels.csv", threshold=0.7)  # doctest: +SKIP
        >>> print(report.to_markdown())  # doctest: +SKIP
    """
    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"threshold {threshold} is outside [-1, 1]", hint="kappa runs from -1 to 1; 0.6 is usual")
    table = read_labels(path)
    if len(table.raters) < 2 or not table.items:
        raise UserError(f"need at least 2 raters and 1 item, got {len(table.raters)} rater(s) "
                        f"and {len(table.items)} item(s)", file=path,
                        hint="long form: item,rater,label; wide form: item,<rater>,<rater>...")
    _require_complete(table)
    categories, counts = _count_table(table.labels)
    grid = table.labels.astype(str)
    pairwise = {f"{table.raters[x]}|{table.raters[y]}": cohen_kappa(grid[:, x], grid[:, y])
                for x, y in itertools.combinations(range(len(table.raters)), 2)}
    n = len(table.raters)
    observed, _chance = _fleiss_agreements(counts)
    statistic = "cohen" if n == 2 else "fleiss"
    cohen = next(iter(pairwise.values())) if n == 2 else None
    fleiss = fleiss_kappa(counts)
    deciding = cohen if n == 2 else fleiss
    return AgreementReport(
        n_items=len(table.items), n_raters=n, categories=categories, cohen_kappa=cohen,
        pairwise_cohen=pairwise, fleiss_kappa=fleiss, observed_agreement=observed,
        threshold=threshold, passed=bool(deciding >= threshold), statistic=statistic, path=path)
