"""Micro-benchmark: padded batches with full logits vs packed rows with selected-position logits.

Forward + backward (no optimizer step, no LoRA) of the embedded SmolLM2-135M in fp32 on CPU, over
16 chat examples whose lengths follow a long tail from 20 to 300 tokens. Reports real (non-pad)
tokens per second for:

  (a) padded batches of 4, shuffled, `model(**batch).loss` (every position's logits), the
      common Hugging Face baseline;
  (b) packed rows (`pack_examples`, 1024 tokens) with `causal_lm_loss` (logits only where a
      token is supervised);
  (c) the same packed rows with full logits, to split the gain between packing and the head.

Run it on an otherwise idle machine (a report figure, not a test):

    OMP_NUM_THREADS=2 .venv/bin/python bench/packing_micro.py --threads 2
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.models.batch import collate_packed, collate_padded, encode_record, pack_examples
from domaintune.models.loss import causal_lm_loss, token_counts

# Long-tailed target lengths (tokens), as chat data usually is: many short, a few long.
LENGTHS = [20, 24, 28, 32, 36, 42, 48, 56, 64, 76, 90, 110, 140, 180, 230, 300]
WORDS = ("the patient reported a mild headache and was advised to rest drink water contract law covers "
         "agreements between parties including offer acceptance consideration machine learning models "
         "learn patterns from data make predictions on new inputs").split()


def make_records(seed: int = 0) -> list[dict]:
    """One conversation per target length: a question (~30% of the words) and an answer (~70%).

    Filler words are about one token each, so a conversation has roughly its target length plus
    the template's overhead (SmolLM2's default system prompt and headers, ~40 tokens).
    """
    rng = random.Random(seed)
    records = []
    for target in LENGTHS:
        words = [rng.choice(WORDS) for _ in range(target)]
        cut = max(1, target * 3 // 10)
        records.append({"messages": [{"role": "user", "content": " ".join(words[:cut])},
                                     {"role": "assistant", "content": " ".join(words[cut:])}]})
    return records


def timed(model, batches, step) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(model, batch).backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def full_logits(model, batch):
    return model(**batch, use_cache=False).loss


def selected(model, batch):
    return causal_lm_loss(model, batch)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, model = load_tokenizer("embedded"), load_model("embedded").train()
    template = get_template("auto", tokenizer)
    examples = [encode_record(r, tokenizer, template, 512).example for r in make_records()]
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    padded = [collate_padded([examples[i] for i in order[k:k + args.batch_size]], tokenizer.pad_token_id)
              for k in range(0, len(order), args.batch_size)]
    packed = [collate_packed([examples[i] for i in row]) for row in pack_examples(examples, args.max_tokens)]
    real = sum(token_counts(b)[0] for b in packed)
    supervised = sum(token_counts(b)[1] for b in packed)
    slots = sum(b["input_ids"].numel() for b in padded)
    print(f"{len(examples)} examples, {real} tokens ({supervised} supervised), padded slots {slots}, "
          f"{len(packed)} packed rows; threads={args.threads}")
    timed(model, packed[:1], selected)  # warm-up: allocator and kernels
    results = {"(a) padded + full logits": timed(model, padded, full_logits),
               "(b) packed + selected logits": timed(model, packed, selected),
               "(c) packed + full logits": timed(model, packed, full_logits)}
    base = real / results["(a) padded + full logits"]
    for name, seconds in results.items():
        print(f"{name:32s} {seconds:7.2f} s  {real / seconds:8.1f} tokens/s  x{real / seconds / base:.2f}")


if __name__ == "__main__":
    main()
