"""Parity: does the exported model answer like base+adapter did in training?

For a few prompts (from the eval records, else built-in samples) both sides build the prompt
their own way (the reference with the training `ChatTemplate` and tokenizer, the export with the
tokenizer and Jinja chat template it ships), then decode greedily through `models.decode.generate`,
the decoder eval and serve use. Per prompt it records whether the prompt ids are equal, whether
the continuations are identical, and the teacher-forced top-1 agreement: the share of positions of
the reference continuation where the exported model's argmax is the reference's token (given the
same prefix, so one early difference does not hide everything after it).

    ref = measure(tuned, ref_ids, stops, pad, max_new_tokens=32, gaps=True)
    exp = measure(exported, exp_ids, stops, pad, max_new_tokens=32)
    hits = agreement(exported, ref.prompt_ids, ref.continuations)
    pooled(hits), pooled(hits, ref.gaps, CONFIDENT_GAP)     # all positions, confident ones
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from domaintune.export.table import ParityRow

SAMPLE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Explain what a contract is in one sentence."}),
    ({"role": "user", "content": "List three common symptoms of the flu."},),
    ({"role": "user", "content": "请用一句话介绍机器学习。"},),
)
TIMED_TOKENS = 16
CONFIDENT_GAP = 0.1  # logits: the reference's token led the runner-up by at least this much


@dataclass(frozen=True)
class Case:
    """One parity prompt.

    Attributes:
        messages: the conversation up to the answer.
        answer: the reference answer from the eval record, or None.
    """

    messages: tuple[dict[str, str], ...]
    answer: str | None


@dataclass(frozen=True)
class Measured:
    """One model's side of the check.

    Attributes:
        prompt_ids: the prompt ids it was given.
        continuations: its greedy continuation of each (the stop token included).
        ms_per_token: one request's decoding time per token, or None when not timed.
        gaps: per continuation token, how far (in logits) the chosen token led the runner-up;
            recorded for the reference only (else None).
    """

    prompt_ids: list[list[int]]
    continuations: list[list[int]]
    ms_per_token: float | None
    gaps: list[list[float]] | None = None


def cases_from_records(records: Sequence[Mapping[str, Any]] | None, limit: int) -> list[Case]:
    """Parity prompts: each chat record up to its last assistant turn, else the built-in samples.

    Args:
        records: eval records (`{"messages": [...]}`); raw-text records are skipped.
        limit: the most cases returned.

    Returns:
        Up to `limit` cases; answers come from each record's last assistant message.

    Example:
        >>> cases_from_records([{"messages": [{"role": "user", "content": "2+2?"},
        ...                                   {"role": "assistant", "content": "4"}]}], 4)[0].answer
        '4'
    """
    cases = []
    for record in records or ():
        messages = record.get("messages")
        if not messages:
            continue
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last == 0:
            continue
        prompt = messages[:last] if last is not None else messages
        answer = messages[last]["content"] if last is not None else None
        cases.append(Case(tuple(dict(m) for m in prompt), answer))
        if len(cases) >= limit:
            return cases
    return cases or [Case(c, None) for c in SAMPLE_CONVERSATIONS[:limit]]


def training_prompt_ids(template: Any, tokenizer: Any, cases: Sequence[Case]) -> list[list[int]]:
    """Prompt ids as training builds them (`models.codec.prompt_ids`, which eval decodes with too)."""
    from domaintune.models.codec import prompt_ids

    return [prompt_ids(template, tokenizer, list(c.messages)) for c in cases]


def shipped_prompt_ids(tokenizer: Any, cases: Sequence[Case]) -> list[list[int]]:
    """Prompt ids as a runtime builds them from an export: its tokenizer and shipped Jinja template."""
    return [_encode(tokenizer, tokenizer.apply_chat_template(list(c.messages), add_generation_prompt=True,
                                                              tokenize=False)) for c in cases]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def measure(model: Any, prompt_ids: list[list[int]], stop_ids: Sequence[int], pad_id: int, max_new_tokens: int,
            timed: bool = True, gaps: bool = False) -> Measured:
    """Greedy continuations of every prompt (batched), and optionally one timed request.

    Args:
        model: a causal LM or peft model, in eval mode.
        prompt_ids: the prompts.
        stop_ids: tokens that end a continuation.
        pad_id: padding id for batching.
        max_new_tokens: the longest continuation.
        timed: also time one request of `TIMED_TOKENS` tokens (stop tokens ignored).
        gaps: also record each continuation token's lead over the runner-up (the reference side).

    Returns:
        The continuations, the time per token in milliseconds, and the gaps if asked.
    """
    from domaintune.models.decode import SamplingParams, generate

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=tuple(stop_ids))
    continuations = [g.token_ids for g in generate(model, prompt_ids, params, pad_id)]
    speed = None
    if timed and prompt_ids:
        gen = generate(model, prompt_ids[:1], SamplingParams(max_new_tokens=TIMED_TOKENS), pad_id)[0]
        speed = 1000.0 * gen.total_s / max(1, len(gen.token_ids))
    leads = None
    if gaps:
        leads = [_top2_gap(_next_logits(model, p, c)).tolist() for p, c in zip(prompt_ids, continuations)]
    return Measured(prompt_ids, continuations, speed, leads)


@torch.inference_mode()
def _next_logits(model: Any, prompt: Sequence[int], cont: Sequence[int]) -> torch.Tensor:
    """Teacher-forced logits predicting each token of `cont` after `prompt`: [len(cont), vocab]."""
    ids = torch.tensor([list(prompt) + list(cont)], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    return logits[len(prompt) - 1: len(prompt) - 1 + len(cont)].float()


def _top2_gap(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def agreement(model: Any, prompt_ids: Sequence[Sequence[int]],
              continuations: Sequence[Sequence[int]]) -> list[list[bool]]:
    """Teacher-forced top-1 agreement with reference continuations.

    Args:
        model: the model under test.
        prompt_ids: the reference prompts.
        continuations: the reference's greedy continuations of them.

    Returns:
        Per prompt, per continuation position: whether `model`'s argmax is the reference token.
    """
    out = []
    for prompt, cont in zip(prompt_ids, continuations):
        predicted = _next_logits(model, prompt, cont).argmax(-1).tolist() if cont else []
        out.append([a == b for a, b in zip(predicted, cont)])
    return out


def pooled(hits: Sequence[Sequence[bool]], gaps: Sequence[Sequence[float]] | None = None,
           min_gap: float = 0.0) -> float:
    """Share of agreeing positions over all prompts; with `gaps`, only where the reference led by >= `min_gap`.

    At near-ties any rounding flips the argmax while the fp32 model itself is nearly indifferent,
    so reports give agreement on all positions and on the positions the reference was sure of.

    Example:
        >>> pooled([[True, False]], [[2.0, 0.01]], min_gap=0.1)
        1.0
    """
    kept = [h for i, row in enumerate(hits) for j, h in enumerate(row) if gaps is None or gaps[i][j] >= min_gap]
    return sum(kept) / len(kept) if kept else 1.0


def exact_match(tokenizer: Any, continuations: Sequence[Sequence[int]], cases: Sequence[Case]) -> float | None:
    """Exact match (percent) of decoded continuations, by eval's rule (`data.answers.normalize_answer`),
    or None without answers."""
    from domaintune.data.answers import normalize_answer

    if not cases or any(c.answer is None for c in cases):
        return None
    texts = [tokenizer.decode(list(ids), skip_special_tokens=True).strip() for ids in continuations]
    hits = [normalize_answer(text) == normalize_answer(case.answer) for text, case in zip(texts, cases, strict=True)]
    return 100.0 * sum(hits) / len(hits)


def parity_rows(cases: Sequence[Case], tokenizer: Any, ref: Measured, exp: Measured,
                hits: Sequence[Sequence[bool]]) -> list[ParityRow]:
    """One table row per prompt."""
    rows = []
    for i, case in enumerate(cases):
        user = next((m["content"] for m in reversed(case.messages) if m["role"] == "user"), "")
        rows.append(ParityRow(user, len(ref.prompt_ids[i]), ref.prompt_ids[i] == exp.prompt_ids[i],
                              tokenizer.decode(ref.continuations[i]), tokenizer.decode(exp.continuations[i]),
                              ref.continuations[i] == exp.continuations[i], pooled([hits[i]])))
    return rows
