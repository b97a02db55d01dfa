"""Throughput and memory of `domaintune prepare` on generated chat data.

Generates long-tailed English/Chinese chat rows (with PII, 5% exact and 5% near duplicates), then runs
the full pipeline in a fresh subprocess per configuration, so peak RSS is that run's alone:

    python bench/prepare.py                       # 10k and 100k rows, exact-only vs near-dedup
    python bench/prepare.py --rows 1000000 --configs exact   # the 1M-row check

Reported: rows/s (input rows over wall time of the pipeline, model tokenizer load excluded),
peak RSS, and near-dedup's cost relative to exact-only measured in the same run. Never run it beside
another CPU-heavy job: two processes on these 2 cores slow each other down by 10x.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EN = ("patient", "reports", "chest", "pain", "after", "exercise", "with", "shortness", "of", "breath", "the",
      "contract", "clause", "requires", "notice", "within", "thirty", "days", "loan", "interest", "rate", "fixed")
ZH = "患者胸痛伴呼吸困难合同条款要求三十日内通知贷款利率固定医生建议检查"


def make_row(rng: random.Random, i: int) -> dict:
    n = int(rng.paretovariate(1.5) * 20) % 200 + 10
    if rng.random() < 0.2:
        question = "".join(rng.choice(ZH) for _ in range(n // 2)) + f"（编号{i}）"
        answer = "".join(rng.choice(ZH) for _ in range(n))
    else:
        question = " ".join(rng.choice(EN) for _ in range(n // 3)) + f" case {i}?"
        answer = " ".join(rng.choice(EN) for _ in range(n))
    if rng.random() < 0.05:
        answer += f" Call 138{rng.randrange(10**8):08d} or mail user{i}@example.com."
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "domain": rng.choice(["med", "law", "fin"])}


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    recent: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            r = rng.random()
            if r < 0.05 and recent:
                row = rng.choice(recent)                              # exact duplicate
            elif r < 0.10 and recent:
                base = rng.choice(recent)                             # near duplicate: one word changed
                words = base["messages"][1]["content"].split(" ")
                words[rng.randrange(len(words))] = "changed"
                row = {**base, "messages": [base["messages"][0], {"role": "assistant", "content": " ".join(words)}]}
            else:
                row = make_row(rng, i)
                recent = (recent + [row])[-1000:]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


CHILD = """
import json, resource, sys, time
from domaintune import api
from domaintune.config import load_recipe
recipe = load_recipe(None, base=json.loads(sys.argv[1]))
t0 = time.perf_counter()
if recipe.model.name != "none":
    api._tokenizer_parts(recipe)   # warm the tokenizer cache so its load is not timed as rows
report = api.prepare(recipe, progress=False)
print(json.dumps({"seconds": report["timing"]["seconds"], "rows": report["totals"]["rows_in"],
                  "kept": report["totals"]["kept"], "dups": report["duplicates"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_config(data: Path, out: Path, model: str, near: bool) -> dict:
    base = {"model": {"name": model}, "prepare": {"inputs": [{"path": str(data)}], "output_dir": str(out),
                                                  "dedup": {"near": near}}}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(base)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--configs", nargs="+", default=["exact", "near"], choices=["exact", "near"])
    ap.add_argument("--model", default="embedded", help="'embedded' counts real tokens; 'none' counts words")
    args = ap.parse_args()
    print(f"{'rows':>9} {'config':>6} {'rows/s':>9} {'peak RSS MB':>12} {'exact':>7} {'near':>6}  near cost")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            data = Path(tmp) / f"bench-{rows}.jsonl"
            generate(data, rows)
            speeds = {}
            for config in args.configs:
                r = run_config(data, Path(tmp) / f"out-{rows}-{config}", args.model, near=config == "near")
                speeds[config] = r["rows"] / r["seconds"]
                ratio = f"{speeds['exact'] / speeds['near']:.2f}x slower" if config == "near" and "exact" in speeds else ""
                print(f"{rows:>9} {config:>6} {speeds[config]:>9.0f} {r['peak_rss_mb']:>12.0f} "
                      f"{r['dups'].get('exact', 0):>7} {r['dups'].get('near', 0):>6}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
