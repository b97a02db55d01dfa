"""How much one decoding step costs per row: the ceiling of what batching can buy on this machine.

Times `models.running.RunningBatch` steps of the embedded model for several batch sizes (the
server's continuous batching decodes exactly so), and one `F.linear` of the model's MLP shape for
1, 2, 4 and 8 rows. The tokens/s ratio of batch b to batch 1 bounds the batched/unbatched ratio
`bench/serve_load.py` can show with b clients.

    OMP_NUM_THREADS=2 .venv/bin/python bench/batch_step.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from domaintune.models.decode import SamplingParams
from domaintune.models.load import load_model
from domaintune.models.running import RunningBatch


def step_ms(model, rows: int, steps: int) -> float:
    batch = RunningBatch(model, pad_id=0)
    params = SamplingParams(max_new_tokens=steps + 4)
    batch.add(list(range(rows)), [list(range(100, 130))] * rows, [params] * rows)
    batch.step()
    batch.step()  # warm
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    return (time.perf_counter() - start) / steps * 1000


def linear_us(rows: int, calls: int = 300) -> float:
    weight, x = torch.randn(1536, 576), torch.randn(rows, 576)
    for _ in range(10):
        F.linear(x, weight)
    start = time.perf_counter()
    for _ in range(calls):
        F.linear(x, weight)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("embedded").eval()
    base = None
    print(f"{'rows':>5} {'ms/step':>8} {'tokens/s':>9} {'x 1 row':>8}")
    for rows in args.batches:
        ms = step_ms(model, rows, args.steps)
        base = base or rows * 1000 / ms
        print(f"{rows:>5} {ms:>8.1f} {rows * 1000 / ms:>9.1f} {rows * 1000 / ms / base:>7.2f}x")
    print("F.linear 576->1536:", ", ".join(f"{r} rows {linear_us(r):.0f} us" for r in (1, 2, 4, 8)))


if __name__ == "__main__":
    main()
