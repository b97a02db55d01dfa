"""The prepare report: report.json for machines and report.md for people.

Counts per source and per reject reason, duplicates by kind, personal data masked per type,
terminology seen, token-length percentiles with the model's tokenizer, mix ratios asked vs actual,
split sizes and class balance. The numbers come from the pipeline's `Ledger`; nothing is re-counted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from domaintune.config import PrepareConfig
from domaintune.data.process import TextStats
from domaintune.data.rejects import Ledger


def build_report(cfg: PrepareConfig, ledger: Ledger, stats: TextStats, tokens: list[int], too_long: int,
                 mix: dict[str, Any], written: Counter[str], labels: Counter, seconds: float,
                 has_tokenizer: bool, sampled: bool = False) -> dict[str, Any]:
    """Gather every figure of one prepare run into one JSON-ready dict."""
    rows_in = sum(ledger.rows_in.values())
    return {
        "output_dir": str(cfg.output_dir),
        "inputs": [{"source": s.source, "path": s.path} for s in cfg.inputs],
        "totals": _totals(ledger, written),
        "per_source": _per_source(ledger),
        "reject_reasons": _by_second(ledger.rejected),
        "duplicates": _by_second(ledger.duplicates),
        "pii": dict(sorted(stats.pii.items())),
        "role_injection": {"mode": cfg.role_injection, "rows": stats.injection_rows,
                           "tokens": dict(stats.injection_tokens.most_common())},
        "terms": _terms(stats.terms),
        "tokens": _token_stats(tokens, too_long, cfg.max_tokens, has_tokenizer, sampled),
        "mix": {k: v for k, v in mix.items() if k != "copies"},
        "split": {"ratios": dict(zip(("train", "val", "test"), cfg.split.ratios)),
                  "stratify_by": cfg.split.stratify_by or "source", "rows": {k: written.get(k, 0) for k in ("train", "val", "test")}},
        "class_balance": _class_balance(cfg.label_field, labels),
        "timing": {"seconds": round(seconds, 3), "rows_per_s": round(rows_in / seconds, 1) if seconds else None},
        "seed": cfg.seed,
    }


def _totals(ledger: Ledger, written: Counter[str]) -> dict[str, Any]:
    rows_in = sum(ledger.rows_in.values())
    chunks = sum(ledger.chunks_added.values())
    kept = sum(ledger.output.values())
    rejected = sum(ledger.rejected.values())
    dups = sum(ledger.duplicates.values())
    return {"rows_in": rows_in, "chunks_added": chunks, "kept": kept, "rejected": rejected, "duplicates": dups,
            "rows_written": sum(written.values()),
            "balanced": rows_in + chunks == kept + rejected + dups}


def _per_source(ledger: Ledger) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for source, rows in ledger.rows_in.items():
        row = {"rows_in": rows, "chunks_added": ledger.chunks_added[source]}
        row["rejected"] = sum(n for (s, _), n in ledger.rejected.items() if s == source)
        row["duplicates"] = sum(n for (s, _), n in ledger.duplicates.items() if s == source)
        for split in ("train", "val", "test"):
            row[split] = ledger.output[(source, split)]
        out[source] = row
    return out


def _by_second(counter: Counter[tuple[str, str]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for (_, key), n in counter.items():
        totals[key] += n
    return dict(totals.most_common())


def _terms(seen: Counter[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, Counter[str]] = defaultdict(Counter)
    for (canonical, form), n in seen.items():
        grouped[canonical][form] += n
    return {term: {"total": sum(forms.values()), "forms": dict(forms.most_common())}
            for term, forms in sorted(grouped.items())}


def _token_stats(tokens: list[int], too_long: int, max_tokens: int, has_tokenizer: bool,
                 sampled: bool) -> dict[str, Any]:
    """Length percentiles over the counted rows (all of them, or a 1-in-N sample on large inputs)."""
    unit = "model tokens" if has_tokenizer else "words (no tokenizer)"
    if not tokens:
        return {"unit": unit, "count": 0, "over_max_tokens": too_long, "max_tokens": max_tokens}
    arr = np.asarray(tokens)
    p50, p95 = np.percentile(arr, [50, 95])
    return {"unit": unit, "count": int(arr.size), "sampled": sampled, "p50": float(p50), "p95": float(p95),
            "max": int(arr.max()),
            "mean": round(float(arr.mean()), 1), "total": int(arr.sum()),
            "over_max_tokens": too_long, "max_tokens": max_tokens}


def _class_balance(field: str | None, labels: Counter) -> dict[str, Any] | None:
    """Per-class counts in train and 'balanced' weights n / (k * count_c), as scikit-learn defines them."""
    if not field:
        return None
    counts = {str(k): v for k, v in labels.most_common()}
    total, k = sum(counts.values()), len(counts)
    weights = {c: round(total / (k * n), 4) for c, n in counts.items()} if k else {}
    return {"field": field, "counts": counts, "weights": weights}


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write report.json and report.md into `out`."""
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")


def render_markdown(r: dict[str, Any]) -> str:
    """The report as Markdown: headline counts first, details after."""
    t = r["totals"]
    lines = ["# domaintune prepare report", "",
             f"{t['rows_in']} input rows -> {t['kept']} kept, {t['rejected']} rejected, {t['duplicates']} duplicates "
             f"({'every row accounted for' if t['balanced'] else 'ACCOUNTING MISMATCH'}); "
             f"{t['rows_written']} rows written.", ""]
    lines += _table("Per source", ["source", *next(iter(r["per_source"].values()), {}).keys()],
                    [[s, *row.values()] for s, row in r["per_source"].items()])
    lines += _table("Reject reasons", ["reason", "rows"], r["reject_reasons"].items())
    lines += _table("Duplicates", ["kind", "rows"], r["duplicates"].items())
    lines += _table("Personal data masked", ["kind", "count"], r["pii"].items())
    inj = r["role_injection"]
    lines += [f"Role injection ({inj['mode']}): {inj['rows']} rows held control tokens.", ""]
    lines += _table("Terminology", ["term", "total", "forms"],
                    [[k, v["total"], ", ".join(f"{f}: {n}" for f, n in v["forms"].items())] for k, v in r["terms"].items()])
    tok = r["tokens"]
    if tok.get("count"):
        sample = f" (from a sample of {tok['count']} rows)" if tok["sampled"] else ""
        lines += [f"## Length ({tok['unit']}{sample})", "", f"p50 {tok['p50']:.0f}, p95 {tok['p95']:.0f}, max {tok['max']}; "
                  f"{tok['over_max_tokens']} rows over max_tokens={tok['max_tokens']} were rejected.", ""]
    if r["mix"].get("asked"):
        lines += _table("Mix (train)", ["source", "asked", "available", "actual rows"],
                        [[s, r["mix"]["asked"].get(s, 0), r["mix"]["available"].get(s, 0), n]
                         for s, n in r["mix"]["actual"].items()])
    lines += _table("Split", ["split", "rows"], r["split"]["rows"].items())
    if r["class_balance"]:
        cb = r["class_balance"]
        lines += _table(f"Class balance ({cb['field']}, train)", ["class", "rows", "suggested weight"],
                        [[c, n, cb["weights"][c]] for c, n in cb["counts"].items()])
    lines += [f"Time: {r['timing']['seconds']} s ({r['timing']['rows_per_s']} rows/s).", ""]
    return "\n".join(lines)


def _table(title: str, header: list[str], rows) -> list[str]:
    rows = [list(map(str, row)) for row in rows]
    if not rows:
        return []
    return [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]
