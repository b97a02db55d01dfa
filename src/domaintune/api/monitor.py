"""`api.monitor_drift` and `api.monitor_shadow`: windows of production traffic (the `serve --store` database) against the training data.

    report, paths = api.monitor_drift("prepared/train.jsonl", "traffic.db", window=200, model="icd")
    report, paths = api.monitor_shadow("traffic.db", model="icd")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domaintune.api.data import resolve_path, training_split
from domaintune.errors import UserError


def monitor_drift(reference: str, store: str, *, window: int = 200, model: str | None = None,
                  since_days: float | None = None, predictions: str | None = None,
                  output_dir: str = "drift") -> tuple[dict[str, Any], dict[str, Path]]:
    """Compare consecutive windows of stored requests with the reference; write drift.json and drift.png.

    Args:
        reference: the prepared training split (or its folder: train.jsonl inside).
        store: the traffic store `serve --store` wrote (a SQLite path or an SQLAlchemy URL).
        window: requests per window (at least 20).
        model: only requests to this served name.
        since_days: only requests of the last N days.
        predictions: eval's predictions.jsonl on validation, whose confidences set the reference's mean.
        output_dir: where drift.json and drift.png go.

    Raises:
        UserError: a missing reference, an unreachable store, a window under 20.
    """
    from datetime import datetime, timedelta, timezone

    from domaintune.data.store import Store
    from domaintune.monitor.drift import drift_report, write_drift

    if window < 20:
        raise UserError(f"a drift window of {window} requests is too small to tell drift from noise",
                        hint="--window 20 or more (200 by default)")
    records = training_split(reference)
    traffic = Store(store)
    try:
        since = datetime.now(timezone.utc) - timedelta(days=since_days) if since_days else None
        rows = traffic.requests(since=since, model=model)
    finally:
        traffic.close()
    report = drift_report(records, rows, window, _confidences(predictions) if predictions else None)
    report.update(reference=str(records.path), reference_sha256=records.sha256, model=model)
    return report, write_drift(report, Path(output_dir))


def monitor_shadow(store: str, *, window: int = 100, model: str | None = None, since_days: float | None = None,
                   output_dir: str = "shadow") -> tuple[dict[str, Any], dict[str, Path]]:
    """Report a shadow candidate against production from the store `serve --shadow` wrote.

    Raises:
        UserError: an unreachable store, or a store without shadow answers.
    """
    from datetime import datetime, timedelta, timezone

    from domaintune.data.store import Store
    from domaintune.monitor.shadow import shadow_report, write_shadow

    traffic = Store(store)
    try:
        since = datetime.now(timezone.utc) - timedelta(days=since_days) if since_days else None
        shadows = [s for s in traffic.shadows(since=since) if model is None or s["model"] == model]
        if not shadows:
            raise UserError("the store holds no shadow answers" + (f" for {model}" if model else ""),
                            hint="serve with --shadow NAME=CANDIDATE --store ... and send NAME some requests")
        report = shadow_report(traffic.requests(since=since, model=model), shadows, traffic.feedback(since=since),
                               window)
    finally:
        traffic.close()
    return report, write_shadow(report, Path(output_dir))


def _confidences(path: str) -> list[float]:
    file = Path(resolve_path(path))
    try:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read eval predictions: {err}", file=str(file),
                        hint="give the predictions.jsonl an `eval` on validation wrote") from None
    values = [float(r["confidence"]) for r in rows if isinstance(r.get("confidence"), (int, float))]
    if not values:
        raise UserError("these predictions carry no confidences", file=str(file),
                        hint="evaluate a run with a closed answer set (confidences come from closed-set decoding)")
    return values


def monitor_export(store: str, output: str, *, since_days: float | None = None, exclude: list[str] | None = None,
                   min_rating: int = 4) -> dict[str, Any]:
    """Write feedback as training records (`monitor/flywheel.py`): OUTPUT and OUTPUT's rejects file.

    Args:
        store: the traffic store.
        output: the JSONL to write (`prepare` reads it); the rejects go beside it (`.rejects.jsonl`).
        since_days: only feedback of the last N days.
        exclude: prepared folders or JSONL files whose questions must not come back (train, val, test).
        min_rating: the lowest star rating that approves production's answer.

    Returns:
        {"records", "rejects", "by_origin", "output", "rejects_file"}.
    """
    from collections import Counter
    from datetime import datetime, timedelta, timezone

    from domaintune.data.store import Store
    from domaintune.files import write_text_atomic
    from domaintune.monitor.flywheel import feedback_records
    from domaintune.train.data import load_split

    excluded = []
    for item in exclude or []:
        path = Path(resolve_path(item))
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            if not file.name.endswith(".rejects.jsonl"):
                excluded += list(load_split(file))
    traffic = Store(store)
    try:
        since = datetime.now(timezone.utc) - timedelta(days=since_days) if since_days else None
        records, rejects = feedback_records(traffic.requests(), traffic.feedback(since=since), exclude=excluded,
                                            min_rating=min_rating)
    finally:
        traffic.close()
    out = Path(output)
    rejects_file = out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(rejects_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    return {"records": len(records), "rejects": len(rejects), "output": out, "rejects_file": rejects_file,
            "by_origin": dict(Counter(r["metadata"]["origin"] for r in records)),
            "by_reason": dict(Counter(r["reason"] for r in rejects))}


def monitor_promote(recipe: Any, candidate: str, over: str, *, alpha: float = 0.05,
                    output_dir: str = "promote") -> dict[str, Any]:
    """Promote `candidate` over the current run `over` only if it is not significantly worse on any
    metric both report on the recipe's eval data (paired tests, `api.compare`); writes decision.json
    and decision.md (the evidence: every metric, both means, the difference, its interval, p).

    Returns:
        {"promote": bool, "worse": [...], "better": [...], "tests": {...}, "files": {...}}.
    """
    from domaintune.api.evaluation import compare
    from domaintune.files import write_json_atomic, write_text_atomic

    out = Path(output_dir)
    result = compare(recipe, over, candidate, output_dir=str(out / "compare"), names=("current", "candidate"))
    tests = result["tests"]
    worse = sorted(m for m, t in tests.items() if t["p_value"] < alpha and t["diff"] < 0)
    better = sorted(m for m, t in tests.items() if t["p_value"] < alpha and t["diff"] > 0)
    decision = {"promote": not worse and bool(tests), "candidate": str(candidate), "current": str(over),
                "n": result["n"], "alpha": alpha, "worse": worse, "better": better,
                "tests": {m: {k: t[k] for k in ("a_mean", "b_mean", "diff", "ci_low", "ci_high", "p_value",
                                                "verdict")} for m, t in tests.items()}}
    lines = [f"# Promote {candidate} over {over}? **{'yes' if decision['promote'] else 'no'}**", "",
             f"{result['n']} paired examples ({recipe.eval.data}); the candidate is promoted only when it is not "
             f"significantly worse (p < {alpha}, paired) on any metric.", "",
             "| metric | current | candidate | difference | CI | p |", "|---|---|---|---|---|---|"]
    for metric, t in decision["tests"].items():
        lines.append(f"| {metric} | {t['a_mean']:.2f} | {t['b_mean']:.2f} | {t['diff']:+.2f} | "
                     f"[{t['ci_low']:.2f}, {t['ci_high']:.2f}] | {t['p_value']:.3g} |")
    lines += ["", *(t["verdict"] for t in decision["tests"].values())]
    if not tests:
        lines += ["", "No metric could be tested: nothing to decide on, so nothing is promoted."]
    files = {"json": write_json_atomic(out / "decision.json", decision),
             "md": write_text_atomic(out / "decision.md", "\n".join(lines) + "\n"), "html": result["html"]}
    return {**decision, "files": files}
