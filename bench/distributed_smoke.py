"""Short smokes of several processes: `torchrun -m domaintune train` under each `train.distributed` strategy.

    python bench/distributed_smoke.py                      # on a GPU machine: one process per GPU, bf16
    python bench/distributed_smoke.py --cpu --processes 2  # anywhere: gloo, fp32 (checks the script works)

For each strategy (ddp, fsdp2; or --strategies) it runs `--steps` optimizer steps of LoRA (or
--method full) on the model (--model, default the embedded SmolLM2-135M-Instruct) over the bundled
ICD-10-CM rows (prepared once, first), each job alone,
one after the other, and reads process 0's summary.json: tokens/s (the whole job's), the measured
peak (CUDA's max_memory_allocated on GPU, peak RSS on CPU) and the pre-flight estimate per process.
Writes OUT/results.json and prints a markdown table for docs/distributed.md.

NCCL cannot put two processes on one GPU: with fewer than 2 GPUs the GPU smoke says so and stops
(the CPU smoke still runs). DeepSpeed is not driven by this loop (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.call(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU, fp32 (default: NCCL on GPUs)")
    parser.add_argument("--processes", type=int, default=None, help="default: the GPU count (2 with --cpu)")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp2"])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_out/distributed"))
    args = parser.parse_args()

    import torch

    gpus = torch.cuda.device_count()
    procs = args.processes or (2 if args.cpu else gpus)
    if not args.cpu and (gpus < 2 or procs > gpus):
        sys.exit(f"{gpus} GPU(s) here: NCCL needs one GPU per process ({procs} asked). Run with --cpu to "
                 "check the script, or on a machine with 2 or more GPUs.")
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs)),
           "TOKENIZERS_PARALLELISM": "false"}
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cli = [sys.executable, "-m", "domaintune"]
    from importlib.resources import files

    rows_file = str(files("domaintune") / "datasets" / "icd10_chapters.jsonl")
    run([*cli, "prepare", rows_file, "-o", str(out / "prepared"), "-q"], env, out / "prepare.log")
    rows = []
    for strategy in args.strategies:
        run_dir = out / strategy
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m", "domaintune",
               "train", "--model", args.model, "--data", str(out / "prepared"), "-o", str(run_dir),
               "--method", args.method, "--max-steps", str(args.steps),
               "--set", f"train.distributed.strategy={strategy}", "--set", "train.eval_every=1000"]
        seconds = run(cmd, env, out / f"{strategy}.log")
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        peak = summary.get("peak_memory") or {}
        measured = peak.get("cuda_peak_bytes") or peak.get("peak_rss_bytes")
        rows.append({"strategy": strategy, "processes": procs, "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
                     "method": args.method, "steps": summary["steps"], "wall_s": round(seconds, 1),
                     "tokens_per_s": summary.get("tokens_per_s"), "peak_bytes_rank0": measured,
                     "estimated_bytes_per_process": (summary.get("memory_estimate") or {}).get("total")})
    (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("| strategy | processes | device | method | steps | tokens/s | peak rank 0 (GiB) | estimate (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gib = [f"{b / 2**30:.2f}" if b else "-" for b in (r["peak_bytes_rank0"], r["estimated_bytes_per_process"])]
        print(f"| {r['strategy']} | {r['processes']} | {r['device']} | {r['method']} | {r['steps']} | "
              f"{r['tokens_per_s'] or 0:,.0f} | {gib[0]} | {gib[1]} |")


if __name__ == "__main__":
    main()
