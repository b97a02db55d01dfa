"""Answers for evaluation: each test conversation's last assistant turn is generated and compared.

A prepared chat record (`train.data.load_split`) is cut at its LAST assistant turn: everything
before it is the prompt, rendered by the very `ChatTemplate` training used with the generation
prompt appended and tokenized the way `ChatTemplate.encode` tokenizes (no tokenizer-added
specials; the templates write BOS themselves), so the prompt ids are a prefix of the ids the
model was trained on. The assistant content is the reference. Generation runs through
`models.decode.generate` (the decoder the server and export parity checks share) and stops on
the template's end-of-turn tokens plus EOS.

Latency comes from the same decoder: `latency_stats` summarizes per-request timings, and
`measure_latency` times single requests of exactly `n_tokens` tokens (stops ignored).

    >>> rows = generate_answers(model, tok, get_template("chatml"), load_split("prepared/test.jsonl"),  # doctest: +SKIP
    ...                         SamplingParams(max_new_tokens=64))
    >>> rows[0]["prediction"], rows[0]["reference"]                                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from domaintune.errors import UserError
from domaintune.models.codec import pad_id, prompt_ids, stop_ids
from domaintune.models.context import question_text
from domaintune.models.decode import FINISH_STOP, Generation, SamplingParams, generate
from domaintune.models.templates import ChatTemplate

Messages = list[dict[str, str]]
FewShot = Callable[[Mapping[str, Any]], Messages]


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Put `model` in eval mode (dropout off) for the block, then restore its previous mode.

    Example:
        >>> with eval_mode(model):          # doctest: +SKIP
        ...     rows = generate_answers(model, tok, tpl, records, SamplingParams())
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def split_last_turn(messages: Sequence[Mapping[str, str]]) -> tuple[Messages, str]:
    """Split a conversation into the messages before its last assistant turn and that turn's text.

    Args:
        messages: a chat conversation holding at least one assistant turn.

    Returns:
        `(prompt_messages, reference)`. Turns after the last assistant turn are dropped.

    Raises:
        UserError: no assistant turn, or nothing before it.

    Example:
        >>> split_last_turn([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
        ([{'role': 'user', 'content': 'Hi'}], 'Hello')
    """
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last < 1:
        raise UserError("an evaluation record needs a prompt followed by an assistant answer",
                        hint="evaluate on chat records from `domaintune prepare` ({\"messages\": [...]})")
    return [dict(m) for m in messages[:last]], str(messages[last]["content"])


def answer_text(tokenizer: Any, template: ChatTemplate, gen: Generation) -> str:
    """Decode a generation into answer text: the stop token and anything after a stop string removed.

    Leading/trailing whitespace is stripped: some templates end the generation prompt before
    the space that separates the answer ("Assistant:" then " Paris"), while the reference is the
    bare content.

    Example:
        >>> answer_text(tok, get_template("chatml"), gen)   # doctest: +SKIP
        'Paris'
    """
    ids = gen.token_ids[:-1] if gen.finish_reason == FINISH_STOP else gen.token_ids
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for stop in template.stop:
        text = text.split(stop, 1)[0]
    return text.strip()


def generate_answers(model: Any, tokenizer: Any, template: ChatTemplate, records: Sequence[Mapping[str, Any]],
                     params: SamplingParams | Sequence[SamplingParams], *, batch_size: int = 16, few_shot: FewShot | None = None,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Generate the last assistant turn of each record.

    Args:
        model: a causal LM or a peft model (put in eval mode for the call).
        tokenizer: the model's fast tokenizer.
        template: the chat template training used.
        records: prepared chat records, `{"messages": [...], "metadata": {...}}`.
        params: sampling settings, one for all records or one per record; `stop_ids` are extended
            with the template's stop ids.
        batch_size: prompts decoded together.
        few_shot: optional `record -> messages` (e.g. a `functools.partial` of
            `eval.fewshot.few_shot_messages`) that puts examples before each test conversation.
        progress: called with the number of records each finished decoding batch held.

    Returns:
        One dict per record, in order: `prompt` (the last user message), `prompt_text` (the
        rendered prompt the model saw), `reference`, `prediction`, `prompt_tokens`,
        `generated_tokens`, `finish_reason`, `first_token_s`, `total_s`, `confidence` (the
        answer's probability within `params.choices`, else None) and `metadata` (the
        record's own, `{}` if none).

    Raises:
        UserError: a record is not a chat record with an assistant answer.

    Example:
        >>> rows = generate_answers(model, tok, tpl, records, SamplingParams(max_new_tokens=32))  # doctest: +SKIP
        >>> sorted(rows[0])[:3]                                                                 # doctest: +SKIP
        ['finish_reason', 'first_token_s', 'generated_tokens']
    """
    stops = stop_ids(template, tokenizer)
    rows = [params] * len(records) if isinstance(params, SamplingParams) else list(params)
    params = [replace(p, stop_ids=tuple(dict.fromkeys(p.stop_ids + stops))) for p in rows]
    splits = [split_last_turn(_conversation(r, few_shot)) for r in records]
    prompts = [prompt_ids(template, tokenizer, messages) for messages, _ in splits]
    with eval_mode(model):
        gens = generate(model, prompts, params, pad_id(tokenizer), batch_size=batch_size, progress=progress)
    return [_row(tokenizer, template, r, messages, ref, gen)
            for r, (messages, ref), gen in zip(records, splits, gens)]


def _conversation(record: Mapping[str, Any], few_shot: FewShot | None) -> Sequence[Mapping[str, str]]:
    if "messages" not in record:
        raise UserError("an evaluation record has no 'messages'",
                        hint="evaluate on chat records from `domaintune prepare`")
    return few_shot(record) if few_shot is not None else record["messages"]


def _row(tokenizer: Any, template: ChatTemplate, record: Mapping[str, Any], messages: Messages, reference: str,
         gen: Generation) -> dict[str, Any]:
    return {"prompt": question_text(record), "prompt_text": template.render(messages, add_generation_prompt=True),
            "reference": reference, "prediction": answer_text(tokenizer, template, gen),
            "prompt_tokens": gen.prompt_tokens, "generated_tokens": len(gen.token_ids),
            "finish_reason": gen.finish_reason, "first_token_s": gen.first_token_s, "total_s": gen.total_s,
            "confidence": gen.confidence, "metadata": dict(record.get("metadata") or {})}


# ---- latency -----------------------------------------------------------------------------------

def latency_stats(generations: Sequence[Generation | Mapping[str, Any]], n_tokens: int = 200) -> dict[str, float]:
    """Summarize generation timings: per-token latency, time to first token, time for n tokens.

    The time per generated token of a request is `(total_s - first_token_s) / (tokens - 1)`,
    i.e. decoding after the first token (requests with fewer than two tokens give none).

    Args:
        generations: `Generation`s, or rows from `generate_answers` (they carry the same timings).
        n_tokens: the length the estimate `seconds_for_n_tokens` is made for.

    Returns:
        `ms_per_token_p50/p95`, `ttft_ms_p50/p95` (time to first token) and
        `seconds_for_n_tokens` (= ttft p50 + (n-1) x ms per token p50), plus `n_tokens` and
        `requests`. Values are NaN when there is nothing to measure.

    Example:
        >>> round(latency_stats([Generation([1, 2, 3], "length", 5, 0.1, 0.3)])["ms_per_token_p50"], 6)
        100.0
    """
    timings = [_timing(g) for g in generations]
    per_token = [1000 * (total - first) / (n - 1) for n, first, total in timings if n >= 2]
    ttft = [1000 * first for n, first, _ in timings if n >= 1]
    stats = {"requests": float(len(timings)), "n_tokens": float(n_tokens),
             "ms_per_token_p50": _pct(per_token, 50), "ms_per_token_p95": _pct(per_token, 95),
             "ttft_ms_p50": _pct(ttft, 50), "ttft_ms_p95": _pct(ttft, 95)}
    stats["seconds_for_n_tokens"] = (stats["ttft_ms_p50"] + (n_tokens - 1) * stats["ms_per_token_p50"]) / 1000
    return stats


def _timing(gen: Generation | Mapping[str, Any]) -> tuple[int, float, float]:
    if isinstance(gen, Generation):
        return len(gen.token_ids), gen.first_token_s, gen.total_s
    return int(gen["generated_tokens"]), float(gen["first_token_s"]), float(gen["total_s"])


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure_latency(model: Any, tokenizer: Any, template: ChatTemplate, prompts: Sequence[Sequence[Mapping[str, str]]],
                    n_tokens: int = 200) -> dict[str, float]:
    """Time single-request generation of exactly `n_tokens` tokens for a few prompts.

    Each prompt is generated alone (batch of one, greedy, stop tokens ignored), after one short
    untimed warm-up, so the figures are what one user waiting on one answer sees.

    Args:
        model: a causal LM or a peft model.
        tokenizer: its tokenizer.
        template: its chat template.
        prompts: a few conversations, each ending before the turn to generate.
        n_tokens: tokens generated per request.

    Returns:
        `latency_stats` of the runs, plus `seconds_p50`/`seconds_p95`: the measured wall time
        of the whole request (prefill and `n_tokens` tokens).

    Example:
        >>> measure_latency(model, tok, tpl, [[{"role": "user", "content": "Hi"}]], n_tokens=50)  # doctest: +SKIP
    """
    ids = [prompt_ids(template, tokenizer, p) for p in prompts]
    pad = pad_id(tokenizer)
    with eval_mode(model):
        if ids:
            generate(model, ids[:1], SamplingParams(max_new_tokens=min(8, n_tokens)), pad)
        gens = [generate(model, [p], SamplingParams(max_new_tokens=n_tokens), pad)[0] for p in ids]
    stats = latency_stats(gens, n_tokens)
    totals = [g.total_s for g in gens]
    return {**stats, "seconds_p50": _pct(totals, 50), "seconds_p95": _pct(totals, 95)}
