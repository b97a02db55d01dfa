"""Build the bundled general reference set from the embedded base model's own greedy answers.

Reads `src/domaintune/datasets/general_prompts.jsonl` (general-purpose prompts written for
domaintune), has SmolLM2-135M-Instruct answer each one greedily (at most 160 new tokens), and
writes `src/domaintune/datasets/general_reference.jsonl`: one `{"messages": [user, assistant],
"metadata": {...}}` row per prompt that got a usable answer. The rows serve two purposes:

* replay data: mixed into a domain fine-tune, they remind the model of its own general behaviour;
* the reference for forgetting: eval scores the base and the tuned model on these conversations
  (perplexity and next-token KL), so the figure measures how far the tuned model drifted from
  the base on text the base itself would write.

Run from the repository root (about 15 minutes on one thread of a busy 2-core CPU):

    OMP_NUM_THREADS=1 .venv/bin/python examples/general/build_general_set.py

Design choices:
- Prompts, stop tokens and decoding are eval's own (`eval.generate.prompt_ids`,
  `stop_token_ids`, `models.decode.generate`, greedy) with the template eval picks by default
  (`get_template("auto", tokenizer)`), so the answers are what `domaintune eval` sees the base
  model produce. Special tokens are dropped from the answer text: `prepare` rejects content that
  holds control tokens.
- An answer cut off at the token limit is trimmed back to its last complete sentence: replay
  rows are trained with an end-of-turn token, and a mid-sentence stop would teach the model to
  stop mid-sentence. One with no complete sentence is dropped.
- Empty, echoed and looping answers are dropped and counted in the log. A loop is measured on the
  raw answer as the share of its token 5-grams that already occurred in it. A CJK character, a
  word or a punctuation mark is one token, so Chinese and English are judged alike; numbers are
  skipped, so "1. X 2. X 3. X" counts as the loop it is. 0.45 and above is dropped: on the first
  build every answer there was stuck ("a canvas of the soul, a canvas of the soul, ...",
  "你可以看到，你可以看到，...", a poem repeating "a fleeting sight"), and no fluent one passed 0.42.
- `--raw FILE` keeps every raw answer; `--from-raw FILE` re-applies these rules to such a file
  without generating again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from domaintune.eval.generate import prompt_ids, stop_token_ids
from domaintune.models.decode import FINISH_LENGTH, SamplingParams, generate
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = REPO_ROOT / "src" / "domaintune" / "datasets"
SOURCE_TAG = "SmolLM2-135M-Instruct greedy"
MIN_CHARS = 2
LOOP_NGRAM = 5
MAX_REPEATED_SHARE = 0.45  # share of token 5-grams seen before in the same answer; see the docstring
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\d_]\w*|[^\w\s]")  # CJK char | word | punctuation
_LIST_MARKER = re.compile(r"(?:^|\n)\s*\d+\.$")  # "3." opening a list item is not a sentence end
# A sentence ends at ., !, ? (followed by space/end) or at a CJK full stop; a closing quote may follow.
_SENTENCE_END = re.compile(r"(?:[.!?](?=\s|$)|[。！？])[\"'”’)]?")


def read_prompts(path: Path) -> list[dict]:
    """Rows of a prompts jsonl file, each with exactly one user message."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        if [m["role"] for m in row["messages"]] != ["user"]:
            sys.exit(f"{path}:{i}: expected exactly one user message")
    return rows


def answer_all(rows: list[dict], model_spec: str, max_new_tokens: int, batch_size: int) -> list[tuple[str, str]]:
    """Greedy answers from the base model, as `(text, finish_reason)` in the order of `rows`."""
    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec).eval()
    template = get_template("auto", tokenizer)
    prompts = [prompt_ids(template, tokenizer, r["messages"]) for r in rows]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                            stop_ids=stop_token_ids(template, tokenizer))
    gens = generate(model, prompts, params, tokenizer.pad_token_id, batch_size=batch_size)
    return [(tokenizer.decode(g.token_ids, skip_special_tokens=True).strip(), g.finish_reason) for g in gens]


def trim_to_sentence(text: str) -> str:
    """Cut `text` after its last complete sentence; "" when there is none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_MARKER.search(text, 0, m.end())]
    return text[:ends[-1]].rstrip() if ends else ""


def repeated_share(text: str, n: int = LOOP_NGRAM) -> float:
    """Share of the token n-grams in `text` that already occurred earlier in it (0 for short text)."""
    tokens = _TOKEN.findall(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def degenerate_reason(prompt: str, answer: str) -> str | None:
    """Why a raw answer is unusable ("empty", "echoes the prompt", "loops"), or None when it is fine."""
    if len(answer.strip()) < MIN_CHARS:
        return "empty"
    if answer.strip() in prompt:
        return "echoes the prompt"
    if repeated_share(answer) >= MAX_REPEATED_SHARE:
        return "loops"
    return None


def build_rows(rows: list[dict], answers: list[tuple[str, str]]) -> tuple[list[dict], Counter]:
    """Reference rows for usable answers, plus a count of what happened to each prompt."""
    kept, log = [], Counter()
    for row, (text, finish) in zip(rows, answers):
        reason = degenerate_reason(row["messages"][0]["content"], text)
        truncated = finish == FINISH_LENGTH
        if truncated and not reason:
            text = trim_to_sentence(text)
            reason = None if text else "no complete sentence"
        if reason:
            log[f"dropped: {reason}"] += 1
            continue
        log["kept, trimmed at the token limit" if truncated else "kept, finished"] += 1
        meta = {**row["metadata"], "source": SOURCE_TAG, "trimmed": truncated}
        kept.append({"messages": [*row["messages"], {"role": "assistant", "content": text}], "metadata": meta})
    return kept, log


def read_raw(path: Path, rows: list[dict]) -> list[tuple[str, str]]:
    """Answers saved by an earlier `--raw` run, checked to belong to the same prompts in order."""
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if [r["prompt"] for r in raw] != [row["messages"][0]["content"] for row in rows]:
        sys.exit(f"{path}: its prompts are not those of the prompts file, in the same order")
    return [(r["answer"], r["finish"]) for r in raw]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept readable."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=DATASETS / "general_prompts.jsonl")
    parser.add_argument("--out", type=Path, default=DATASETS / "general_reference.jsonl")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--raw", type=Path, default=None,
                        help="also write every raw answer with its finish reason here, to review what was dropped")
    parser.add_argument("--from-raw", type=Path, default=None,
                        help="skip generation: re-filter the answers an earlier --raw run saved")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = read_prompts(args.prompts)
    if args.from_raw:
        answers = read_raw(args.from_raw, rows)
    else:
        start = time.perf_counter()
        answers = answer_all(rows, args.model, args.max_new_tokens, args.batch_size)
        print(f"{len(rows)} prompts answered in {time.perf_counter() - start:.0f} s "
              f"(torch threads: {torch.get_num_threads()})")
    if args.raw:
        write_jsonl(args.raw, [{"prompt": r["messages"][0]["content"], "answer": text, "finish": finish}
                               for r, (text, finish) in zip(rows, answers)])
    kept, log = build_rows(rows, answers)
    write_jsonl(args.out, kept)
    for what, n in sorted(log.items()):
        print(f"  {what}: {n}")
    langs = Counter(r["metadata"]["lang"] for r in kept)
    print(f"wrote {len(kept)} of {len(rows)} rows ({dict(sorted(langs.items()))}) to {args.out}")


if __name__ == "__main__":
    main()
