"""Load test: N concurrent chat clients for T seconds against `domaintune serve` on loopback,
with dynamic batching on and off in the same run.

For each mode (batched: `--max-batch-size`; unbatched: batch size 1) a server is started in a
child process (so the clients' Python never competes with it for the GIL), warmed up with one
request, then loaded by each `--clients` count in turn. Every client sends greedy chat requests
back to back (a 429 makes it wait for Retry-After, as a polite client does). Printed per mode and
client count: requests/s, generated tokens/s, p50/p95 latency, errors, and 429s; then the
batched/unbatched throughput ratio per client count.

Run it on an otherwise idle machine (a report figure, not a test):

    OMP_NUM_THREADS=2 .venv/bin/python bench/serve_load.py --clients 2,8,32 --seconds 30 --threads 2

A quick smoke run:

    .venv/bin/python bench/serve_load.py --clients 2 --seconds 2 --max-tokens 8

Soak (issue 13: 32 clients for 5 minutes, batched only): every status code is counted, and the
server's resident memory is sampled every `--sample-s` seconds, so a leak (a batch that keeps
every job it served) shows as a rising line:

    OMP_NUM_THREADS=2 .venv/bin/python bench/serve_load.py --soak --clients 32 --seconds 300 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import time
from dataclasses import dataclass, field

import httpx

QUESTIONS = [
    "What is the capital of France?", "Summarize the report in one sentence.", "List two risks of the contract.",
    "What should a patient with a mild headache do?", "Explain what a chat template is.",
    "Give me one tip for writing clear code.", "What is machine learning?", "Name a river in Europe.",
]


@dataclass
class Tally:
    """What the clients saw during one timed run."""

    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    rejected: int = 0  # 429s
    statuses: dict[int, int] = field(default_factory=dict)  # every answer's status code, counted


def serve_child(args: argparse.Namespace, port: int, max_batch_size: int) -> None:
    """The server process: load the model, serve until SIGTERM (graceful)."""
    import torch

    from domaintune.serve import ServeOptions, build_app, load_served, run_server

    torch.set_num_threads(args.threads)
    adapters = dict(spec.split("=", 1) for spec in args.adapter)
    served = load_served(args.model, adapters)
    options = ServeOptions(max_batch_size=max_batch_size, batch_window_ms=args.batch_window_ms,
                           max_queue=args.max_queue)
    run_server(build_app(served, options), port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, child: mp.Process, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.is_alive():
            raise SystemExit("the server process died while starting")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")


def body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": 0}


async def client_loop(client: httpx.AsyncClient, model: str, worker: int, stop_at: float, max_tokens: int,
                      tally: Tally) -> None:
    i = worker
    while time.monotonic() < stop_at:
        start = time.monotonic()
        try:
            response = await client.post("/v1/chat/completions", json=body(model, i, max_tokens))
        except httpx.HTTPError:
            tally.errors += 1
            continue
        i += 1
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        if response.status_code == 429:
            tally.rejected += 1
            wait = float(response.headers.get("retry-after", "1"))
            await asyncio.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
        elif response.status_code != 200:
            tally.errors += 1
        elif time.monotonic() <= stop_at:  # count only requests that finished inside the window
            tally.latencies.append(time.monotonic() - start)
            tally.tokens += response.json()["usage"]["completion_tokens"]


async def load(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(client, model, w, stop_at, max_tokens, tally) for w in range(clients)))
    return tally


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_mode(args: argparse.Namespace, label: str, max_batch_size: int) -> dict[int, dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = mp.get_context("spawn").Process(target=serve_child, args=(args, port, max_batch_size), daemon=True)
    child.start()
    results = {}
    try:
        wait_ready(url, child)
        model = httpx.get(url + "/v1/models").json()["data"][-1]["id"]  # the last adapter, else the base
        httpx.post(url + "/v1/chat/completions", json=body(model, 0, args.max_tokens), timeout=600)  # warm-up
        for clients in args.clients:
            tally = asyncio.run(load(url, model, clients, args.seconds, args.max_tokens))
            results[clients] = row = summarize(tally, args.seconds)
            print(f"{label:<10} {clients:>7} {row['rps']:>8.2f} {row['tps']:>9.1f} {row['p50']:>8.3f} "
                  f"{row['p95']:>8.3f} {tally.errors:>6} {tally.rejected:>6}", flush=True)
    finally:
        child.terminate()  # SIGTERM: uvicorn finishes in-flight requests, then exits
        child.join(60)
    return results


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return kib / 1024


async def sample_memory(pid: int, every_s: float, stop_at: float, samples: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - start, rss_mib(pid)))
        await asyncio.sleep(every_s)
    samples.append((time.monotonic() - start, rss_mib(pid)))


async def soak_load(url: str, model: str, pid: int, args: argparse.Namespace) -> tuple[Tally, list]:
    clients, samples = max(args.clients), []
    stop_at = time.monotonic() + args.seconds
    memory = asyncio.create_task(sample_memory(pid, args.sample_s, stop_at, samples))
    tally = await load(url, model, clients, args.seconds, args.max_tokens)
    await memory
    return tally, samples


def run_soak(args: argparse.Namespace) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = mp.get_context("spawn").Process(target=serve_child, args=(args, port, args.max_batch_size), daemon=True)
    child.start()
    try:
        wait_ready(url, child)
        model = httpx.get(url + "/v1/models").json()["data"][-1]["id"]
        for i in range(max(args.clients)):  # warm-up: every code path once before memory is sampled
            httpx.post(url + "/v1/chat/completions", json=body(model, i, args.max_tokens), timeout=600)
        tally, samples = asyncio.run(soak_load(url, model, child.pid, args))
    finally:
        child.terminate()
        child.join(60)
    row = summarize(tally, args.seconds)
    fivexx = sum(n for code, n in tally.statuses.items() if code >= 500)
    print(f"soak: {max(args.clients)} clients, {args.seconds:.0f} s: {sum(tally.statuses.values())} answers "
          f"{dict(sorted(tally.statuses.items()))}, {fivexx} 5xx, {tally.errors} errors, {row['rps']:.2f} req/s, "
          f"{row['tps']:.1f} tok/s, p50 {row['p50']:.2f} s, p95 {row['p95']:.2f} s")
    print("server RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in samples))
    first, last = samples[0][1], samples[-1][1]
    half = [m for t, m in samples if t >= samples[-1][0] / 2]
    print(f"RSS first {first:.0f} MiB, last {last:.0f} MiB, max {max(m for _, m in samples):.0f} MiB; "
          f"second half spread {max(half) - min(half):.0f} MiB")


def summarize(tally: Tally, seconds: float) -> dict:
    return {"rps": len(tally.latencies) / seconds, "tps": tally.tokens / seconds,
            "p50": percentile(tally.latencies, 50), "p95": percentile(tally.latencies, 95),
            "errors": tally.errors, "rejected": tally.rejected}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="base model (default: embedded)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="serve an adapter; the load goes to the last one given")
    parser.add_argument("--clients", default="2,8,32", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated concurrent client counts (default: 2,8,32)")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each load run")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--max-batch-size", type=int, default=16, help="batch size of the batched mode")
    parser.add_argument("--batch-window-ms", type=float, default=15.0, help="batching window")
    parser.add_argument("--max-queue", type=int, default=64, help="queue bound (429 beyond)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    parser.add_argument("--soak", action="store_true", help="batched only, the largest --clients count, status "
                                                            "codes counted and server memory sampled")
    parser.add_argument("--sample-s", type=float, default=10.0, help="memory sampling interval of --soak")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.soak:
        run_soak(args)
        return
    print(f"{'mode':<10} {'clients':>7} {'req/s':>8} {'tok/s':>9} {'p50 s':>8} {'p95 s':>8} {'errors':>6} {'429s':>6}")
    batched = run_mode(args, "batched", args.max_batch_size)
    unbatched = run_mode(args, "unbatched", 1)
    for clients in args.clients:
        base = unbatched[clients]["tps"]
        ratio = batched[clients]["tps"] / base if base else float("nan")
        print(f"{clients} clients: batched/unbatched tokens/s = {ratio:.2f}x")


if __name__ == "__main__":
    main()
