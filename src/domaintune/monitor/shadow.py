"""The shadow report: how a candidate's unseen answers compare with production's (`serve --shadow`).

    report = shadow_report(store.requests(), store.shadows(), store.feedback(), window=100)
    paths = write_shadow(report, Path("shadow/"))     # shadow.json, shadow.png

Per window of shadowed requests: the agreement (1 - mean disagreement) and the share identical. The
largest disagreements come with both answers (the review queue is every case over the serve-time
threshold). Where users corrected production's answer (`POST /v1/feedback` with a correction), each
model is right when its answer equals the correction: which one users side with, McNemar's paired
test on those cases; ratings (given on production's answers, the only ones users saw) are averaged
separately where the candidate agreed and where it did not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from domaintune.data.drift import windows
from domaintune.eval.stats import mcnemar
from domaintune.files import write_json_atomic
from domaintune.monitor.drift import stored_prompt

TOP = 10


def shadow_report(requests: Sequence[Mapping[str, Any]], shadows: Sequence[Mapping[str, Any]],
                  feedback: Sequence[Mapping[str, Any]], window: int = 100) -> dict[str, Any]:
    """Agreement over time, the largest disagreements, and the users' side (see the module docstring)."""
    by_id = {r["id"]: r for r in requests}
    cases = []
    for s in shadows:
        request = by_id.get(s["request_id"])
        if request is None or not request.get("output"):
            continue
        cases.append({"request_id": s["request_id"], "ts": _iso(s.get("ts")), "model": s["model"],
                      "prompt": stored_prompt(request), "production": str(request["output"][0]),
                      "candidate": s["output"], "disagreement": float(s["disagreement"]), "review": s["review"]})
    over_time = []
    for start, end in windows(len(cases), window):
        part = cases[start:end]
        over_time.append({"start": start, "end": end, "from": part[0]["ts"], "to": part[-1]["ts"],
                          "agreement": round(1 - sum(c["disagreement"] for c in part) / len(part), 4),
                          "identical": round(sum(c["disagreement"] == 0 for c in part) / len(part), 4)})
    return {"cases": len(cases), "pending_review": sum(c["review"] == "pending" for c in cases),
            "agreement": round(1 - sum(c["disagreement"] for c in cases) / len(cases), 4) if cases else None,
            "windows": over_time, "window": window,
            "largest": sorted(cases, key=lambda c: -c["disagreement"])[:TOP],
            "users": _users(cases, feedback)}


def _users(cases: Sequence[Mapping[str, Any]], feedback: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    shadowed = {c["request_id"]: c for c in cases}
    corrected = [(shadowed[f["request_id"]], f["correction"].strip()) for f in feedback
                 if f["request_id"] in shadowed and f.get("correction")]
    out: dict[str, Any] = {"corrections": len(corrected)}
    if corrected:
        prod = [c["production"].strip() == fix for c, fix in corrected]
        cand = [c["candidate"].strip() == fix for c, fix in corrected]
        test = mcnemar(cand, prod)
        out.update(production_right=sum(prod), candidate_right=sum(cand), p_value=test.p_value,
                   preferred="candidate" if sum(cand) > sum(prod) and test.p_value < 0.05 else
                   "production" if sum(prod) > sum(cand) and test.p_value < 0.05 else "neither (not significant)")
    ratings = {True: [], False: []}
    for f in feedback:
        case = shadowed.get(f["request_id"])
        if case is not None and f.get("rating") is not None:
            ratings[case["disagreement"] == 0].append(int(f["rating"]))
    out["mean_rating"] = {"agreed": _mean(ratings[True]), "disagreed": _mean(ratings[False]),
                          "n_agreed": len(ratings[True]), "n_disagreed": len(ratings[False])}
    return out


def write_shadow(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """shadow.json and shadow.png (agreement per window) into `out`."""
    out = Path(out)
    paths = {"json": write_json_atomic(out / "shadow.json", report)}
    if report["windows"]:
        from matplotlib.figure import Figure

        from domaintune.files import atomic_path

        fig = Figure(figsize=(7.5, 3.2), dpi=110)
        ax = fig.add_subplot()
        xs = [w["end"] for w in report["windows"]]
        ax.plot(xs, [w["agreement"] for w in report["windows"]], marker="o", label="agreement (1 - disagreement)")
        ax.plot(xs, [w["identical"] for w in report["windows"]], marker="s", label="identical answers")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(f"shadowed requests (windows of {report['window']})")
        ax.legend(fontsize=8)
        ax.set_title("Shadow candidate vs production", fontsize=10)
        with atomic_path(out / "shadow.png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        paths["plot"] = out / "shadow.png"
    return paths


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value is not None else None)
