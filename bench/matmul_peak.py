"""This CPU's peak fp32 matmul throughput, the denominator of MFU.

Times `torch.matmul` of square fp32 matrices (1024, 2048 and 4096 by default) with the given
number of threads, keeps the best of several repeats per size (the least disturbed run), and
reports the best size as the peak in GFLOP/s (a matmul of n x n by n x n is 2n³ FLOPs).

    python bench/matmul_peak.py --threads 2            # print it
    python bench/matmul_peak.py --threads 2 --write    # also store it for MFU

`--write` merges `{"cpu:<model name>:<threads>t": <FLOP/s>}` into `$DOMAINTUNE_HOME/peak_flops.json`
(default home `~/.cache/domaintune`), the key and file `train/summary.py:peak_flops_for` reads, so
`domaintune train` and `bench/train_throughput.py` report MFU against it. Run it on a quiet
machine: another process on the same cores lowers the figure, and every MFU computed from it
would then read too high.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from domaintune.models.load import domaintune_home
from domaintune.train.summary import PEAK_FLOPS_FILE, device_key

DEFAULT_SIZES = (1024, 2048, 4096)


def matmul_gflops(n: int, repeats: int, min_seconds: float = 0.2) -> float:
    """Best GFLOP/s of `n x n @ n x n` fp32 matmuls over `repeats` timed runs.

    Each timed run loops until at least `min_seconds` have passed, so small sizes are not
    dominated by timer resolution; one untimed warm-up run comes first.

    Example:
        >>> matmul_gflops(256, repeats=2) > 0
        True
    """
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    out = torch.empty(n, n, dtype=torch.float32)
    torch.matmul(a, b, out=out)  # warm-up: thread pool start, page faults of `out`
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, 2.0 * n**3 * calls / elapsed / 1e9)
    return best


def write_peak(key: str, flops: float, home: Path) -> Path:
    """Merge `{key: flops}` into `home/peak_flops.json` (atomic replace) and return the file."""
    file = home / PEAK_FLOPS_FILE
    data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    data[key] = flops
    home.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python bench/matmul_peak.py --threads 2 --write")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="square matrix sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size; the best one counts")
    parser.add_argument("--write", action="store_true", help="store the peak in $DOMAINTUNE_HOME/peak_flops.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    key = device_key(torch.device("cpu"), torch.get_num_threads())
    results = {n: matmul_gflops(n, args.repeats) for n in args.sizes}
    for n, gflops in results.items():
        print(f"n={n:5d}: {gflops:8.1f} GFLOP/s")
    peak = max(results.values())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"peak {peak:.1f} GFLOP/s fp32 with {args.threads} threads ({key}); load average {load:.2f}")
    if args.write:
        print(f"written to {write_peak(key, peak * 1e9, domaintune_home())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
