"""Generation metrics for `domaintune eval`: exact match, label accuracy/P/R/F1, JSON field F1,
BLEU, chrF and ROUGE (Chinese-aware).

Every metric returns the corpus figure *and* one score per example, so `stats.compare_metric`
can run paired tests on the same examples for two models. One convention throughout: every
value is a percentage in [0, 100] (as sacrebleu reports BLEU and chrF; exact match per example
is 0 or 100), so a difference between two models reads in "points". Corpus BLEU and chrF pool
n-gram statistics, so they are not the mean of the sentence scores in `per_example` (which
paired tests compare); every other metric has `value == mean(per_example)`.

    >>> exact_match(["Paris.", "rome"], ["paris", "Milan"]).value
    50.0
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from domaintune.data.answers import normalize_answer
from domaintune.errors import UserError

__all__ = ["MetricResult", "bleu", "chrf", "exact_match", "extract_label", "is_chinese",
           "json_field_metrics", "label_metrics", "normalize_answer", "rouge"]

OTHER = "<other>"  # confusion-matrix column for predictions outside the label set

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class MetricResult:
    """A corpus figure and the per-example scores behind it.

    Attributes:
        name: metric name as it appears in reports ("exact_match", "bleu", "rouge1", ...).
        value: the corpus figure, in percent (0-100).
        per_example: one score per example, in percent (0-100), in input order.
        binary: True when each per-example score is 0 or 100 (right or wrong), so McNemar applies.
    """

    name: str
    value: float
    per_example: list[float] = field(default_factory=list)
    binary: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} references",
                        hint="score each prediction against the reference of the same example")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                **norm: bool) -> MetricResult:
    """Share of predictions equal to their reference after `normalize_answer`.

    Args:
        predictions: model outputs.
        references: one reference per example, or a list of acceptable references.
        **norm: options passed to `normalize_answer` (lower, strip_punct, ...).

    Returns:
        A binary `MetricResult` named "exact_match" (per example 0 or 100).

    Example:
        >>> exact_match(["an apple"], [["apple", "pear"]], strip_articles=True).per_example
        [100.0]
    """
    _check_lengths(predictions, references)
    scores = []
    for pred, ref in zip(predictions, references):
        refs = [ref] if isinstance(ref, str) else ref
        hit = normalize_answer(pred, **norm) in {normalize_answer(r, **norm) for r in refs}
        scores.append(100.0 if hit else 0.0)
    return MetricResult("exact_match", _mean(scores), scores, binary=True)


@functools.lru_cache(maxsize=64)
def _label_patterns(labels: tuple[str, ...]) -> tuple[dict[str, str], list[tuple[re.Pattern[str], str]]]:
    exact = {normalize_answer(label): label for label in labels}
    patterns = []
    for norm, label in exact.items():
        if not norm:
            continue
        # A word boundary keeps "no" out of "not"; CJK has no spaces, so a CJK edge needs none.
        left = "" if _CJK.match(norm[0]) else r"(?<!\w)"
        right = "" if _CJK.match(norm[-1]) else r"(?!\w)"
        patterns.append((re.compile(left + re.escape(norm) + right), label))
    return exact, patterns


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """Map a free generation onto a label set.

    An exact match after `normalize_answer` wins; otherwise the label that appears first in the
    text (the longest one if several start at the same place); otherwise None.

    Args:
        text: the generation.
        labels: the allowed labels; the result is one of them, or None.

    Example:
        >>> extract_label("The answer is Chapter 10 (neoplasms).", ["Chapter 1", "Chapter 10"])
        'Chapter 10'
    """
    exact, patterns = _label_patterns(tuple(labels))
    norm = normalize_answer(text)
    if norm in exact:
        return exact[norm]
    best: tuple[int, int, str] | None = None
    for pattern, label in patterns:
        m = pattern.search(norm)
        if m and (best is None or (m.start(), -len(m.group())) < best[:2]):
            best = (m.start(), -len(m.group()), label)
    return best[2] if best else None


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    p = 100.0 * tp / n_pred if n_pred else 0.0
    r = 100.0 * tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _macro(per: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = ("precision", "recall", "f1")
    return {k: _mean([v[k] for v in per.values()]) for k in keys}


def label_metrics(predictions: Sequence[str | None], references: Sequence[str],
                  labels: Sequence[str] | None = None) -> dict:
    """Accuracy, micro/macro precision/recall/F1, per-label scores and a confusion matrix.

    A prediction outside the label set (or None from `extract_label`) is wrong and lands in the
    "<other>" column. Micro precision counts only predictions inside the label set, micro recall
    all examples. Macro scores average the per-label scores over every label (macro F1 is the
    mean of per-label F1, as in scikit-learn); an undefined ratio counts as 0.

    Args:
        predictions: predicted labels (already mapped with `extract_label` for free text).
        references: gold labels.
        labels: the label set; default: the sorted set of reference labels.

    Returns:
        A JSON-ready dict, scores in percent: accuracy, micro, macro, per_label (precision,
        recall, f1, support), confusion (labels; columns = labels + "<other>"; matrix, a row per
        gold label), n, n_other, per_example (0 or 100).

    Raises:
        UserError: lengths differ, or a reference is not in `labels`.

    Example:
        >>> label_metrics(["a", "b", "x"], ["a", "b", "b"])["accuracy"]
        66.66666666666667
    """
    _check_lengths(predictions, references)
    names = sorted(set(labels) if labels is not None else set(references))
    index = {label: i for i, label in enumerate(names)}
    unknown = sorted(set(references) - set(index))
    if unknown:
        raise UserError(f"reference label(s) {unknown[:5]} are not in the label set",
                        hint="add them to the labels list or fix the references")
    other = len(names)
    matrix = [[0] * (other + 1) for _ in names]
    for pred, ref in zip(predictions, references):
        matrix[index[ref]][index.get(pred, other) if pred is not None else other] += 1
    per_example = [100.0 if p == r else 0.0 for p, r in zip(predictions, references)]
    per_label = {}
    for label, i in index.items():
        tp, n_pred, n_true = matrix[i][i], sum(row[i] for row in matrix), sum(matrix[i])
        per_label[label] = {**_prf(tp, n_pred, n_true), "support": n_true}
    n_other = sum(row[other] for row in matrix)
    correct = sum(matrix[i][i] for i in range(other))
    return {
        "accuracy": _mean(per_example), "n": len(references), "n_other": n_other,
        "micro": _prf(correct, len(references) - n_other, len(references)),
        "macro": _macro(per_label), "per_label": per_label,
        "confusion": {"labels": names, "columns": [*names, OTHER], "matrix": matrix},
        "per_example": per_example,
    }


def _parse_json(text: str) -> object:
    """The JSON object in a generation (in a ``` fence, or the outermost {...}); raises ValueError."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):  # a bare number or list is not an extraction
            return obj
    raise ValueError("no JSON object found")


def _field_pairs(obj: object, prefix: str = "") -> set[tuple[str, str]]:
    """(dotted key, normalized value) pairs; list items are separate values, null is absent."""
    if isinstance(obj, dict):
        pairs: set[tuple[str, str]] = set()
        for key, value in obj.items():
            pairs |= _field_pairs(value, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(obj, list):
        return set().union(*(_field_pairs(item, prefix) for item in obj)) if obj else set()
    if obj is None:
        return set()
    value = json.dumps(obj) if isinstance(obj, (bool, int, float)) else str(obj)
    return {(prefix, normalize_answer(value))}


def json_field_metrics(predictions: Sequence[str], references: Sequence[str | dict]) -> dict:
    """Field-level precision/recall/F1 for JSON extraction.

    Each object becomes a set of (key, normalized value) pairs (nested keys dotted, list items
    separate values, null fields absent). A prediction that is not valid JSON (```json fences and
    text around the braces are tolerated) predicts nothing, so its reference fields are misses.
    Micro scores pool all pairs; macro scores average per-key scores over the reference keys.

    Args:
        predictions: generations.
        references: gold objects, as dicts or JSON strings.

    Returns:
        A JSON-ready dict: micro, macro, per_key, n, n_invalid_json, exact (percent of examples
        with every field right), per_example (field F1 per example; 100 when both are empty).

    Raises:
        UserError: lengths differ or a reference is not valid JSON.

    Example:
        >>> json_field_metrics(['```json\\n{"a": 1, "b": "X"}\\n```'], [{"a": 1, "b": "y"}])["micro"]["f1"]
        50.0
    """
    _check_lengths(predictions, references)
    totals: dict[str, list[int]] = {}  # key -> [tp, n_pred, n_true]
    per_example, n_invalid, n_exact = [], 0, 0
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        try:
            gold = _field_pairs(json.loads(ref) if isinstance(ref, str) else ref)
        except json.JSONDecodeError as err:
            raise UserError(f"reference {i} is not valid JSON: {err.msg}", hint="fix the reference") from None
        try:
            guess = _field_pairs(_parse_json(pred))
        except ValueError:
            guess, n_invalid = set(), n_invalid + 1
        for j, pairs in enumerate((gold & guess, guess, gold)):
            for key, _ in pairs:
                totals.setdefault(key, [0, 0, 0])[j] += 1
        n_exact += gold == guess
        per_example.append(_prf(len(gold & guess), len(guess), len(gold))["f1"] if gold or guess else 100.0)
    per_key = {k: {**_prf(*t), "support": t[2]} for k, t in sorted(totals.items()) if t[2]}
    tp, n_pred, n_true = (sum(t[j] for t in totals.values()) for j in range(3))
    return {"micro": _prf(tp, n_pred, n_true), "macro": _macro(per_key), "per_key": per_key,
            "n": len(references), "n_invalid_json": n_invalid,
            "exact": 100.0 * n_exact / len(references) if references else 0.0, "per_example": per_example}


def is_chinese(text: str, threshold: float = 0.3) -> bool:
    """Whether CJK ideographs make up at least `threshold` of the non-space characters.

    Example:
        >>> is_chinese("患者有2型糖尿病 (T2DM)"), is_chinese("type 2 diabetes")
        (True, False)
    """
    chars = len(text) - sum(ch.isspace() for ch in text)
    return chars > 0 and len(_CJK.findall(text)) / chars >= threshold


def _ref_streams(references: Sequence[str | Sequence[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """Per-example reference lists, and sacrebleu's reference streams (padded with None)."""
    per = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max((len(r) for r in per), default=1)
    streams = [[r[j] if j < len(r) else None for r in per] for j in range(width)]
    return per, streams


def _sacre(metric: object, name: str, predictions: Sequence[str],
           references: Sequence[str | Sequence[str]]) -> MetricResult:
    _check_lengths(predictions, references)
    per, streams = _ref_streams(references)
    if not predictions:
        return MetricResult(name, 0.0, [])
    corpus = metric.corpus_score(list(predictions), streams).score
    scores = [metric.sentence_score(p, refs).score for p, refs in zip(predictions, per)]
    return MetricResult(name, corpus, scores)


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
         tokenize: str | None = None) -> MetricResult:
    """Corpus BLEU with sentence-level BLEU per example (sacrebleu).

    Sentence scores use exponential smoothing with effective order, as `sacrebleu.sentence_bleu`.

    Args:
        predictions: generations.
        references: one reference per example, or a list of references.
        tokenize: a sacrebleu tokenizer; default "zh" when the references are Chinese
            (`is_chinese`), else "13a" (sacrebleu's default).

    Example:
        >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]).value, 1)
        100.0
    """
    from sacrebleu.metrics import BLEU  # heavy import, only when BLEU is asked for

    if tokenize is None:
        first_refs = (r if isinstance(r, str) else (r[0] if r else "") for r in references)
        tokenize = "zh" if is_chinese(" ".join(first_refs)) else "13a"
    return _sacre(BLEU(tokenize=tokenize, effective_order=True), "bleu", predictions, references)


def chrf(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> MetricResult:
    """Corpus chrF (character 6-grams, beta 2) with sentence chrF per example (sacrebleu).

    chrF works on characters with whitespace removed, so Chinese needs no segmentation.

    Example:
        >>> chrf(["患者有糖尿病"], ["患者有糖尿病"]).value
        100.0
    """
    from sacrebleu.metrics import CHRF

    return _sacre(CHRF(), "chrf", predictions, references)


class _RougeTokenizer:
    """Casefolded word tokens for rouge-score, whose own tokenizer drops non-ASCII letters; text
    with CJK is segmented with jieba, and tokens without a word character are dropped."""

    _WORD = re.compile(r"\w+")

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).casefold()
        if not _CJK.search(text):
            return self._WORD.findall(text)
        return [tok for tok in _jieba().lcut(text) if self._WORD.search(tok)]


@functools.lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # otherwise it prints "Building prefix dict" on stderr
    return jieba


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, MetricResult]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measure, per example and averaged (rouge-score).

    Chinese is segmented into words with jieba; other text is split into Unicode word runs
    (rouge-score's own tokenizer would drop every non-ASCII letter). No stemming.

    Returns:
        {"rouge1": ..., "rouge2": ..., "rougeL": ...}, each a `MetricResult` whose value is the
        mean per-example F-measure, in percent.

    Example:
        >>> round(rouge(["the cat sat"], ["the cat ran"])["rouge1"].value, 1)
        66.7
    """
    from rouge_score.rouge_scorer import RougeScorer

    _check_lengths(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(kinds), tokenizer=_RougeTokenizer())
    per: dict[str, list[float]] = {k: [] for k in kinds}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for k in kinds:
            per[k].append(100.0 * scores[k].fmeasure)
    return {k: MetricResult(k, _mean(v), v) for k, v in per.items()}
