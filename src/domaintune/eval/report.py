"""Self-contained HTML reports for `domaintune eval` and `domaintune compare`, plus a text table.

A report is one HTML file that opens offline: CSS is inline, plots are base64 PNGs (see
`eval/plots.py`), and there is no script, web font or link to fetch. Every string that came from
a user (prompts, outputs, label names, model names, file paths) goes through `html.escape`, so a
``<script>`` in a prompt is shown, never run.

The renderers are tolerant: any section of the eval report may be missing or None and is then
left out, and metrics the page does not know are still listed by name.

    >>> before_after_table([{"metric": "exact_match", "a": 2.0, "b": 25.4, "diff": 23.4}]).splitlines()[0].split()
    ['metric', 'A', 'B', 'diff', '95%', 'CI', 'p']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from domaintune.eval import plots
from domaintune.eval.html import as_text, box, clip, fields, figure, flatten, kv_table, write_page
from domaintune.eval.plots import fmt_ci, fmt_number, fmt_p, is_number

EXAMPLES_PER_GROUP = 5
DISAGREEMENTS_SHOWN = 20
# Per-example scores tried in this order to rank examples from worst to best.
RANKING_METRICS = ("exact_match", "accuracy", "f1", "chrf", "rougeL", "rouge1", "bleu")
METRIC_NOTES = {
    "exact_match": "% of answers identical to the reference (after normalization)",
    "accuracy": "% of labels predicted correctly",
    "macro_f1": "F1 averaged over labels, each label counting the same",
    "micro_f1": "F1 over all label decisions pooled",
    "bleu": "n-gram precision against the reference (sacrebleu, 0-100)",
    "chrf": "character n-gram F-score (sacrebleu, 0-100)",
    "rouge1": "unigram overlap F1 (0-100)",
    "rouge2": "bigram overlap F1 (0-100)",
    "rougeL": "longest-common-subsequence F1 (0-100)",
    "perplexity": "on the reference answers' tokens; lower is better",
}
LATENCY_NAMES = {
    "ms_per_token_p50": "ms per generated token, median",
    "ms_per_token_p95": "ms per generated token, p95",
    "ttft_p50_ms": "time to first token, median (ms)",
    "s_per_200_tokens": "seconds to generate 200 tokens",
}


BASELINE_NAMES = {"majority": "majority answer", "tfidf_lr": "TF-IDF + logistic regression",
                  "nearest": "nearest training answer (TF-IDF)"}


# ---- public API ----------------------------------------------------------------------------------

def render_eval_report(report: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], out_path: str | Path,
                       *, loss_curve: Path | None = None) -> Path:
    """Write the eval report of one model as a self-contained HTML page.

    Args:
        report: the content of report.json: sections "model", "data", "metrics", "latency",
            "forgetting", "leak", "labels", "few_shot"; any of them may be missing or None.
        predictions: rows of predictions.jsonl, ``{"prompt", "reference", "prediction", "scores"}``.
        out_path: the HTML file to write; parent folders are created.
        loss_curve: a training run's loss.png to embed; a missing file gets a note instead.

    Returns:
        The path written.

    Example:
        >>> render_eval_report({"metrics": {"exact_match": 41.2}}, [], tmp / "report.html")  # doctest: +SKIP
        PosixPath('.../report.html')
    """
    sections = [
        _eval_header(report),
        _metrics_section(report.get("metrics")),
        _labels_section(report.get("labels")),
        _calibration_section(report.get("calibration")),
        _baselines_section(report.get("baselines")),
        _retrieval_section(report.get("retrieval")),
        _latency_section(report.get("latency")),
        _forgetting_section(report.get("forgetting")),
        _leak_section(report.get("leak")),
        _loss_section(loss_curve),
        _examples_section(predictions),
    ]
    return write_page(out_path, "domaintune eval report", sections)


def render_compare_report(result: Mapping[str, Any], out_path: str | Path) -> Path:
    """Write the A/B comparison report as a self-contained HTML page.

    Args:
        result: ``{"a": {"name", "metrics"}, "b": {...}, "tests": {metric: {"a", "b", "diff",
            "ci_low", "ci_high", "p_value", "method", "verdict"}}, "examples": [{"prompt",
            "reference", "a", "b", "a_correct", "b_correct"}]}``; missing parts are left out.
        out_path: the HTML file to write; parent folders are created.

    Returns:
        The path written.
    """
    names = (str((result.get("a") or {}).get("name") or "A"), str((result.get("b") or {}).get("name") or "B"))
    tests = result.get("tests") or {}
    verdicts = [str(t["verdict"]) for t in tests.values() if t.get("verdict")]
    sections = [
        f"<h1>{escape(names[0])} vs {escape(names[1])}</h1>",
        box("".join(f'<p class="verdict">{escape(v)}</p>' for v in verdicts)) if verdicts else "",
        _compare_table(result, names),
        figure("A vs B", plots.compare_png(names, tests)) if tests else "",
        _disagreements_section(result.get("examples") or [], names),
    ]
    return write_page(out_path, f"domaintune compare: {names[0]} vs {names[1]}", sections)


def compare_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for `before_after_table` from a compare result: tested metrics first, then the rest."""
    tests = result.get("tests") or {}
    rows = [{"metric": m, **{k: t.get(k) for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value")}}
            for m, t in tests.items()]
    a_metrics = (result.get("a") or {}).get("metrics") or {}
    b_metrics = (result.get("b") or {}).get("metrics") or {}
    rows += [{"metric": m, "a": a_metrics.get(m), "b": b_metrics.get(m)}
             for m in dict.fromkeys([*a_metrics, *b_metrics]) if m not in tests]
    return rows


def before_after_table(rows: Sequence[Mapping[str, Any]], *, a_name: str = "A", b_name: str = "B") -> str:
    """A fixed-width text table of metrics before (A) and after (B), for the terminal.

    Args:
        rows: dicts with "metric", "a", "b" and optionally "diff", "ci_low", "ci_high", "p_value"
            (as from `compare_rows`); a missing "diff" is computed as b - a when both are numbers.
        a_name: column title for A.
        b_name: column title for B.

    Returns:
        The table, one line per row under a header line, no trailing newline.

    Example:
        >>> print(before_after_table([{"metric": "exact_match", "a": 2.0, "b": 25.4, "diff": 23.4,
        ...                            "ci_low": 17.1, "ci_high": 29.8, "p_value": 0.0001}]))
        metric          A      B    diff  95% CI               p
        exact_match  2.00  25.40  +23.40  [17.10, 29.80]  <0.001
    """
    table = [["metric", a_name, b_name, "diff", "95% CI", "p"]]
    for row in rows:
        a, b = row.get("a"), row.get("b")
        diff = row.get("diff", b - a if is_number(a) and is_number(b) else None)
        table.append([str(row.get("metric", "")), fmt_number(a), fmt_number(b), fmt_number(diff, signed=True),
                      fmt_ci(row.get("ci_low"), row.get("ci_high")), fmt_p(row.get("p_value"))])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in table]
    return "\n".join(line.rstrip() for line in lines)


def describe_forgetting(forgetting: Mapping[str, Any]) -> str:
    """One plain-language sentence on how far general ability moved.

    Reads "general_kl" (or "mean_kl", as `eval.forgetting.general_kl` names it), "base_ppl" and
    "tuned_ppl"; whichever are present.

    Example:
        >>> describe_forgetting({"general_kl": 0.031, "base_ppl": 12.1, "tuned_ppl": 12.6})
        'general ability moved by KL 0.031 nats/token; general perplexity 12.1 → 12.6 (+4%)'
    """
    parts = []
    kl = forgetting.get("general_kl", forgetting.get("mean_kl"))
    if is_number(kl):
        parts.append(f"general ability moved by KL {kl:.3g} nats/token")
    base, tuned = forgetting.get("base_ppl"), forgetting.get("tuned_ppl")
    if is_number(base) and is_number(tuned):
        pct = (tuned - base) / base * 100 if base else None
        change = "" if pct is None else f" ({pct:+.0f}%)" if abs(pct) >= 1 else f" ({pct:+.1f}%)"
        parts.append(f"general perplexity {base:.3g} → {tuned:.3g}{change}")
    return "; ".join(parts) or "no forgetting figures were recorded"


# ---- eval sections -------------------------------------------------------------------------------

def _eval_header(report: Mapping[str, Any]) -> str:
    model, data, few_shot = report.get("model") or {}, report.get("data") or {}, report.get("few_shot")
    facts = [*model.items(), ("data", data.get("path")), ("data sha256", data.get("sha256")),
             ("examples", data.get("n")), ("prompting", f"{few_shot}-shot" if few_shot else "zero-shot")]
    title = model.get("name") or "model"
    return f"<h1>Evaluation: {escape(str(title))}</h1>" + kv_table([(k, v) for k, v in facts if v is not None])


def _metrics_section(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return ""
    rows = "".join(f'<tr><td>{escape(name)}</td><td class="num">{escape(fmt_number(value))}</td>'
                   f'<td class="muted">{escape(METRIC_NOTES.get(name.split(".")[0], ""))}</td></tr>'
                   for name, value in flatten(metrics))
    return f"<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>meaning</th></tr>{rows}</table>"


def _labels_section(labels: Mapping[str, Any] | None) -> str:
    if not labels:
        return ""
    parts = ["<h2>Per-label results</h2>"]
    per_label = labels.get("per_label") or {}
    if per_label:
        parts.append(figure("F1 per label", plots.label_f1_png(per_label)))
        header = "<tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
        rows = "".join(f"<tr><td>{escape(str(label))}</td>"
                       + "".join(f'<td class="num">{escape(fmt_number(s.get(k)))}</td>'
                                 for k in ("precision", "recall", "f1", "support")) + "</tr>"
                       for label, s in per_label.items())
        parts.append(f"<details><summary>table</summary><table>{header}{rows}</table></details>")
    confusion = labels.get("confusion") or {}
    if confusion.get("labels") and confusion.get("matrix"):
        parts.append(figure("Confusion matrix", plots.confusion_png(confusion["labels"], confusion["matrix"])))
    return "".join(parts)


def _calibration_section(calibration: Mapping[str, Any] | None) -> str:
    if not calibration or not calibration.get("bins"):
        return ""
    facts = [("expected calibration error", f"{fmt_number(calibration['ece'])} points"),
             ("mean confidence", calibration.get("mean_confidence")), ("accuracy", calibration.get("accuracy"))]
    return ("<h2>Confidence vs accuracy</h2>" + kv_table(facts)
            + figure("reliability diagram", plots.reliability_png(calibration["bins"])))


def _baselines_section(baselines: Mapping[str, Any] | None) -> str:
    if not baselines:
        return ""
    rows = "".join(f"<tr><td>{escape(BASELINE_NAMES.get(name, name))}</td><td>{escape(b['metric'])}</td>"
                   f'<td class="num">{escape(fmt_number(b["baseline"]))}</td>'
                   f'<td class="num">{escape(fmt_number(b["model"]))}</td>'
                   f'<td class="num">{escape(fmt_number(b["diff"], signed=True))}</td>'
                   f'<td class="num">{escape(fmt_p(b["p_value"]))}</td></tr>' for name, b in baselines.items())
    losses = [BASELINE_NAMES.get(n, n) for n, b in baselines.items() if b["diff"] < 0]
    note = (box("The model scores below " + ", ".join(losses) + ": a classic baseline does better.", "warn")
            if losses else "")
    return ("<h2>Classic baselines (fitted on the training split)</h2>" + note
            + "<table><tr><th>baseline</th><th>metric</th><th>baseline</th><th>model</th><th>model - baseline</th>"
            + f"<th>p</th></tr>{rows}</table>")


def _retrieval_section(retrieval: Mapping[str, Any] | None) -> str:
    if not retrieval:
        return ""
    by_hit, top1 = retrieval.get("by_hit") or {}, retrieval.get("top1") or {}
    rows = [(f"recall@{retrieval.get('k')} (the reference answer among the retrieved entries)",
             retrieval.get("recall_at_k")),
            (f"model {top1.get('metric')} when retrieval found it ({by_hit.get('hit', {}).get('n')} rows)",
             by_hit.get("hit", {}).get("score")),
            (f"model {top1.get('metric')} when it did not ({by_hit.get('miss', {}).get('n')} rows)",
             by_hit.get("miss", {}).get("score")),
            ("retrieval alone: the top entry's answer", top1.get("score")), ("the model", top1.get("model")),
            ("p (model vs retrieval alone)", fmt_p(top1.get("p_value"))),
            ("knowledge base", f"{retrieval.get('entries')} entries, sha256 {str(retrieval.get('kb_sha256'))[:12]}")]
    return "<h2>Retrieval</h2>" + box(kv_table(rows))


def _latency_section(latency: Mapping[str, Any] | None) -> str:
    if not latency:
        return ""
    rows = [(LATENCY_NAMES.get(k, k), fmt_number(v)) for k, v in latency.items()]
    return "<h2>Latency</h2>" + box(kv_table(rows))


def _forgetting_section(forgetting: Mapping[str, Any] | None) -> str:
    if not forgetting:
        return ""
    sentence = f"<p><b>{escape(describe_forgetting(forgetting))}</b></p>"
    note = ('<p class="muted">Measured on general prompts answered by the base model: KL is the mean '
            "divergence of the tuned model's next-token distribution from the base model's (0 = unchanged); "
            "perplexity is how surprised each model is by those answers.</p>")
    # Scalars only: eval.forgetting's per-example KL list belongs in report.json, not in this box.
    scalars = [(k, v) for k, v in forgetting.items() if not isinstance(v, (list, tuple, Mapping))]
    return "<h2>Forgetting</h2>" + box(sentence + note + kv_table(scalars))


def _leak_section(leak: Mapping[str, Any] | None) -> str:
    if not leak:
        return ""
    verbatim, pii = leak.get("verbatim") or 0, leak.get("pii") or 0
    summary = (f"<p><b>{escape(fmt_number(verbatim))}</b> generations reproduce long verbatim spans of the "
               f"training data; <b>{escape(fmt_number(pii))}</b> reproduce PII-masked originals.</p>")
    examples = "".join(f"<pre>{escape(as_text(e))}</pre>" for e in leak.get("examples") or [])
    details = f"<details><summary>examples</summary>{examples}</details>" if examples else ""
    return "<h2>Leak check</h2>" + box(summary + details, "warn" if verbatim or pii else "ok")


def _loss_section(loss_curve: Path | None) -> str:
    if loss_curve is None:
        return ""
    if not Path(loss_curve).is_file():
        return f'<h2>Training loss</h2><p class="muted">no loss curve at {escape(str(loss_curve))}</p>'
    return "<h2>Training loss</h2>" + figure("training loss", plots.file_data_uri(Path(loss_curve).read_bytes()))


def _examples_section(predictions: Sequence[Mapping[str, Any]]) -> str:
    if not predictions:
        return ""
    metric = _ranking_metric(predictions)
    groups = _pick_examples(list(predictions), metric)
    by = f"ranked by {escape(metric)}" if metric else "unscored"
    parts = [f'<h2>Examples</h2><p class="muted">{len(predictions)} predictions, {by}.</p>']
    for title, rows in groups:
        if rows:
            parts.append(f"<h3>{escape(title)}</h3>" + "".join(_example(r, metric) for r in rows))
    return "".join(parts)


def _ranking_metric(predictions: Sequence[Mapping[str, Any]]) -> str | None:
    seen: dict[str, None] = {}
    for row in predictions:
        for name, value in (row.get("scores") or {}).items():
            if is_number(value):
                seen.setdefault(name)
    return next((m for m in RANKING_METRICS if m in seen), next(iter(seen), None))


def _pick_examples(rows: list[Mapping[str, Any]], metric: str | None) -> list[tuple[str, list]]:
    if metric is None:
        return [("random", random.Random(0).sample(rows, min(EXAMPLES_PER_GROUP, len(rows))))]
    scored = sorted((r for r in rows if is_number((r.get("scores") or {}).get(metric))),
                    key=lambda r: r["scores"][metric])
    worst = scored[:EXAMPLES_PER_GROUP]
    best = [r for r in scored[::-1][:EXAMPLES_PER_GROUP] if not any(r is w for w in worst)]
    rest = [r for r in rows if not any(r is s for s in worst + best)]
    sample = random.Random(0).sample(rest, min(EXAMPLES_PER_GROUP, len(rest)))  # seeded: same page twice
    return [("worst", worst), ("best", best), ("random", sample)]


def _example(row: Mapping[str, Any], metric: str | None) -> str:
    scores = row.get("scores") or {}
    score = f"[{metric} {fmt_number(scores.get(metric))}] " if metric else ""
    body = fields([(name, row.get(name)) for name in ("prompt", "reference", "prediction")])
    score_line = ", ".join(f"{k} {fmt_number(v)}" for k, v in scores.items())
    return (f"<details><summary>{escape(score + clip(as_text(row.get('prompt'))))}</summary>{body}"
            f'<p class="muted">{escape(score_line)}</p></details>')


# ---- compare sections ----------------------------------------------------------------------------

def _compare_table(result: Mapping[str, Any], names: tuple[str, str]) -> str:
    tests = result.get("tests") or {}
    head = "".join(f"<th>{escape(h)}</th>" for h in ("metric", names[0], names[1], "diff", "95% CI", "p",
                                                      "test", "verdict"))
    body = ""
    for row in compare_rows(result):
        test = tests.get(row["metric"]) or {}
        cells = [fmt_number(row.get("a")), fmt_number(row.get("b")), fmt_number(row.get("diff"), signed=True),
                 fmt_ci(row.get("ci_low"), row.get("ci_high")), fmt_p(row.get("p_value"))]
        body += (f"<tr><td>{escape(str(row['metric']))}</td>"
                 + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
                 + f"<td>{escape(str(test.get('method') or ''))}</td>"
                 f"<td>{escape(str(test.get('verdict') or ''))}</td></tr>")
    return f"<h2>Before / after</h2><table><tr>{head}</tr>{body}</table>" if body else ""


def _disagreements_section(examples: Sequence[Mapping[str, Any]], names: tuple[str, str]) -> str:
    flagged = all("a_correct" in e and "b_correct" in e for e in examples)
    differ = [e for e in examples
              if (e.get("a_correct") != e.get("b_correct") if flagged else e.get("a") != e.get("b"))]
    if not differ:
        return ""
    count = f"<p>{len(differ)} of {len(examples)} examples differ"
    if flagged:
        b_wins = sum(1 for e in differ if e.get("b_correct"))
        count += (f": {escape(names[1])} right and {escape(names[0])} wrong on {b_wins}, "
                  f"the reverse on {len(differ) - b_wins}")
    parts = [f"<h2>Where they disagree</h2>{count}.</p>"]
    parts += [_disagreement(e, names, flagged) for e in differ[:DISAGREEMENTS_SHOWN]]
    return "".join(parts)


def _disagreement(example: Mapping[str, Any], names: tuple[str, str], flagged: bool) -> str:
    def mark(key: str) -> str:
        return (" ✓" if example.get(f"{key}_correct") else " ✗") if flagged else ""

    winner = (names[1] if example.get("b_correct") else names[0]) + " right: " if flagged else ""
    body = fields([("prompt", example.get("prompt")), ("reference", example.get("reference")),
                    (names[0] + mark("a"), example.get("a")), (names[1] + mark("b"), example.get("b"))])
    return f"<details><summary>{escape(winner + clip(as_text(example.get('prompt'))))}</summary>{body}</details>"


