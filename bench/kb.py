"""Knowledge-base speed: index build rate, query latency at 100k entries, and what retrieval adds to a request.

    python bench/kb.py                    # 10k and 100k entries; serve overhead on the embedded model
    python bench/kb.py --entries 100000 --no-serve

Entries are generated (Zipf-distributed words from a 20k vocabulary, 8 to 40 words, a fifth in
Chinese), so the numbers do not depend on a data set. Reported: entries/s of
`KnowledgeBase.build` (tokenising and indexing), p50/p95 of single-query `search` (k=4), and for
serving, the wall time of one chat request (prompt rendering, lookup, prefill and 16 greedy tokens
on the embedded model) without and with the reference block, both measured in this run. Goals:
build >= 50k entries/s, p95 <= 5 ms at 100k entries, retrieval <= 10 % of a request. Never run it
beside another CPU-heavy job.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

ZH = "患者胸痛伴呼吸困难合同条款要求三十日内通知贷款利率固定医生建议检查骨折糖尿病肾病高血压"


def make_entries(n: int, seed: int = 0) -> list:
    from domaintune.data.kb import Entry

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    out = []
    for i in range(n):
        length = rng.randint(8, 40)
        if rng.random() < 0.2:
            text = "".join(rng.choice(ZH) for _ in range(length))
        else:
            text = " ".join(rng.choices(vocab, weights, k=length))
        out.append(Entry(i, text, f"answer {i % 50}"))
    return out


def bench_build(n: int) -> dict:
    from domaintune.data.kb import KnowledgeBase

    entries = make_entries(n)
    start = time.perf_counter()
    kb = KnowledgeBase.build(entries)
    seconds = time.perf_counter() - start
    return {"entries": n, "build_s": round(seconds, 2), "entries_per_s": round(n / seconds), "kb": kb}


def bench_query(kb, queries: int = 500, k: int = 4) -> dict:
    rng = random.Random(1)
    texts = [e.text for e in rng.sample(kb.entries, queries)]
    texts = [" ".join(t.split()[: max(3, len(t.split()) // 2)]) for t in texts]  # partial matches
    kb.search(texts[:5], k)  # warm-up
    times = []
    for text in texts:
        start = time.perf_counter()
        kb.search([text], k)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"queries": queries, "p50_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(0.95 * len(times)) - 1], 3)}


def bench_serve(requests: int = 20) -> dict:
    """One chat request on the embedded model, without and with the reference block (k=4)."""
    import torch

    from domaintune.api import bundled_dataset
    from domaintune.data.kb import KnowledgeBase, entries_from_records
    from domaintune.models.codec import prompt_ids
    from domaintune.models.decode import SamplingParams, generate
    from domaintune.models.load import load_model, load_tokenizer
    from domaintune.models.templates import get_template
    from domaintune.serve.knowledge import Knowledge

    rows = [json.loads(line) for line in bundled_dataset().read_text(encoding="utf-8").splitlines()]
    kb = KnowledgeBase.build(entries_from_records(rows[200:]))
    knowledge = Knowledge(kb, 4, 256)
    tok, model = load_tokenizer(), load_model().eval()
    tpl = get_template("chatml")
    params = SamplingParams(max_new_tokens=16, stop_ids=())
    questions = [r["messages"][:-1] for r in rows[:requests]]

    def one(messages, retrieve: bool) -> float:
        start = time.perf_counter()
        shown = knowledge.apply(messages, tok)[0] if retrieve else messages
        with torch.inference_mode():
            generate(model, [prompt_ids(tpl, tok, shown)], params, tok.pad_token_id or 0)
        return time.perf_counter() - start

    one(questions[0], True)  # warm-up
    plain = [one(q, False) for q in questions]
    retrieved = [one(q, True) for q in questions]
    lookup = []
    for q in questions:
        start = time.perf_counter()
        knowledge.apply(q, tok)
        lookup.append(1000 * (time.perf_counter() - start))
    p, r = statistics.median(plain), statistics.median(retrieved)
    return {"requests": requests, "plain_s_p50": round(p, 4), "retrieval_s_p50": round(r, 4),
            "overhead": round(r / p - 1, 4), "lookup_ms_p50": round(statistics.median(lookup), 3),
            "kb_entries": len(kb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--no-serve", action="store_true")
    args = parser.parse_args()
    out = {"builds": []}
    for n in args.entries:
        result = bench_build(n)
        kb = result.pop("kb")
        result.update(bench_query(kb))
        out["builds"].append(result)
        print(json.dumps(result), flush=True)
    if not args.no_serve:
        out["serve"] = bench_serve()
        print(json.dumps(out["serve"]), flush=True)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
