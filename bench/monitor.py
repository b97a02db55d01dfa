"""Drift detection and the traffic store, measured (docs/monitoring.md).

1. False alarms: 1,000 in-distribution requests (ICD-10 questions not in the reference, with their
   labels as the predictions) in consecutive windows; the share of windows with any alarm.
2. Detection delay: after 400 in-distribution requests the traffic switches to general chat prompts
   (another domain); windows slide by a tenth of their size; the delay is the requests after the
   switch until the first window over a threshold (and the in-distribution windows before it that alarmed).
3. Store writes/s: records as serve hands them to `data.store.Store` (SQLite, one writer thread),
   from `write` to all of them committed, in bursts of 1,000 and in one burst of 20,000 (over the
   queue's 10,000 bound: the oldest are dropped and counted, the request path never waits).

    OMP_NUM_THREADS=2 python bench/monitor.py [--out /tmp/monitor.json]

The reference is the bundled ICD-10-CM chapter set (its first 1,400 rows); the 1,015 rows after them
are the in-distribution traffic (reused in order past 1,015). Deterministic: the same numbers every run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

from domaintune.data.drift import DriftMonitor
from domaintune.data.store import Store


def rows(name: str) -> list[dict]:
    text = resources.files("domaintune.datasets").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prompt(row: dict) -> str:
    return [m["content"] for m in row["messages"] if m["role"] == "user"][-1]


def label(row: dict) -> str:
    return row["messages"][-1]["content"]


def false_alarms(monitor: DriftMonitor, live: list[dict], window: int) -> dict:
    checks = [monitor.check([prompt(r) for r in live[s:s + window]], [label(r) for r in live[s:s + window]])
              for s in range(0, len(live) - window + 1, window)]
    by_stat = {k: sum(c[k].alarm for c in checks) for k in checks[0]}
    return {"window": window, "windows": len(checks), "windows_alarmed": sum(any(v.alarm for v in c.values()) for c in checks),
            "alarms_by_statistic": by_stat}


def delay(monitor: DriftMonitor, before: list[dict], after: list[str], window: int) -> dict:
    """Input statistics only: what a served model would predict for the other domain's prompts is not
    known here, so the label statistic is left out (it would only make the alarm earlier)."""
    texts = [prompt(r) for r in before] + after
    step, switch = max(1, window // 10), len(before)
    early, first = 0, None
    for end in range(window, len(texts) + 1, step):
        stats = monitor.check(texts[end - window:end])
        alarmed = [k for k, v in stats.items() if v.alarm]
        if end <= switch and alarmed:
            early += 1
        if end > switch and alarmed and first is None:
            first = {"requests_after_switch": end - switch, "statistics": alarmed}
            break
    return {"window": window, "step": step, "in_distribution_windows_alarmed": early, "first_alarm": first}


def store_rate(n: int, chunk: int) -> dict:
    """`n` records handed over in bursts of `chunk` (each burst flushed before the next: no drops while
    `chunk` is under the queue's bound), and the records committed per second."""
    record = {"endpoint": "chat.completions", "model": "icd", "prompt": [{"role": "user", "content": "Patient with "
              "chest pain radiating to the left arm, call 555-0100 for results"}], "output": ["cardiology"],
              "finish_reasons": ["stop"], "confidences": [0.8], "prompt_tokens": 24, "completion_tokens": 3,
              "latency_s": 0.2, "status": 200, "error": None, "cached": False, "stream": False}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "traffic.db")
        started, queued = time.perf_counter(), 0.0
        for first in range(0, n, chunk):
            t0 = time.perf_counter()
            for i in range(first, min(n, first + chunk)):
                store.write({**record, "id": f"chatcmpl-{i}"})
            queued += time.perf_counter() - t0
            store.flush(600)
        total = time.perf_counter() - started
        stored, dropped = len(store.requests()), store.dropped
        store.close()
    return {"records": n, "burst": chunk, "stored": stored, "dropped": dropped,
            "write_call_us": round(1e6 * queued / n, 1), "stored_per_s": round(stored / total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = parser.parse_args()
    icd, general = rows("icd10_chapters.jsonl"), rows("general_prompts.jsonl")
    reference, held = icd[:1400], icd[1400:]
    live = (held * 2)[:1000]
    started = time.perf_counter()
    monitor = DriftMonitor([prompt(r) for r in reference], [label(r) for r in reference])
    out = {"reference_rows": len(reference), "in_distribution_requests": len(live),
           "false_alarms": [false_alarms(monitor, live, w) for w in (50, 100, 200)],
           "delay": [delay(monitor, held[:400], [prompt(r) for r in general] * 2, w) for w in (50, 100, 200)]}
    out["drift_seconds"] = round(time.perf_counter() - started, 1)
    out["store"] = [store_rate(20_000, 1_000), store_rate(20_000, 20_000)]  # the second overflows the queue
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
