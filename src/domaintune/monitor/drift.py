"""The drift report: consecutive windows of stored requests against the training data (`data.drift`).

    report = drift_report(train_records, store.requests(model="icd"), window=200)
    paths = write_drift(report, Path("drift/"))     # drift.json, drift.png
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from domaintune.data.answers import closed_answer_set, final_answer
from domaintune.data.drift import DriftMonitor, windows
from domaintune.files import write_json_atomic
from domaintune.models.context import query_text, question_text

STATISTICS = ("unigram_kl", "length_psi", "label_psi", "confidence_drop")


def stored_prompt(row: Mapping[str, Any]) -> str:
    """What a stored request asked: its last user message (chat), or its prompt text (completions)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        return query_text(prompt)
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return str(prompt or "")


def drift_report(reference: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], window: int,
                 reference_confidences: Sequence[float] | None = None) -> dict[str, Any]:
    """Each window's statistics, thresholds and alarms, and the first window that raised one.

    Args:
        reference: the training records (prepared chat records).
        rows: stored requests, oldest first (`data.store.Store.requests`); only answered ones count.
        window: requests per window.
        reference_confidences: the model's confidences on validation (eval's predictions.jsonl), so
            that a drop in mean confidence can be told from noise; None: that statistic is skipped.
    """
    answers = closed_answer_set(reference)
    monitor = DriftMonitor([question_text(r) for r in reference],
                           [(final_answer(r) or "").strip() for r in reference] if answers else None,
                           reference_confidences)
    answered = [r for r in rows if r.get("status") == 200 and r.get("output")]
    out = []
    for start, end in windows(len(answered), window):
        part = answered[start:end]
        predicted = [str(r["output"][0]).strip() for r in part] if answers else None
        confidences = [(r.get("confidences") or [None])[0] for r in part]
        stats = monitor.check([stored_prompt(r) for r in part], predicted, confidences)
        out.append({"start": start, "end": end, "from": _iso(part[0].get("ts")), "to": _iso(part[-1].get("ts")),
                    "statistics": {k: v.as_dict() for k, v in stats.items()},
                    "alarm": sorted(k for k, v in stats.items() if v.alarm)})
    first = next((w for w in out if w["alarm"]), None)
    return {"reference_rows": len(reference), "requests": len(answered), "window": window,
            "closed_set": answers is not None, "quantile": monitor.quantile, "bootstraps": monitor.bootstraps,
            "windows": out, "alarms": sum(1 for w in out if w["alarm"]),
            "first_alarm": None if first is None else {"window": out.index(first), "request": first["end"],
                                                        "statistics": first["alarm"]}}


def write_drift(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """drift.json and drift.png (each statistic per window, with its threshold) into `out`."""
    out = Path(out)
    paths = {"json": write_json_atomic(out / "drift.json", report)}
    if report["windows"]:
        paths["plot"] = _plot(report, out / "drift.png")
    return paths


def _plot(report: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    from domaintune.files import atomic_path

    names = [s for s in STATISTICS if any(s in w["statistics"] for w in report["windows"])]
    fig = Figure(figsize=(7.5, 1.9 * len(names)), dpi=110)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        xs = [w["end"] for w in report["windows"] if name in w["statistics"]]
        values = [w["statistics"][name]["value"] for w in report["windows"] if name in w["statistics"]]
        limits = [w["statistics"][name]["threshold"] for w in report["windows"] if name in w["statistics"]]
        ax.plot(xs, values, marker="o", label=name)
        ax.plot(xs, limits, linestyle="--", color="red", label=f"threshold (q{report['quantile']})")
        ax.set_ylabel(name, fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel(f"requests (windows of {report['window']})")
    fig.suptitle("Input drift against the training data", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value is not None else None)
