"""The one batched decoder: eval, export parity checks and the server all generate through it.

Design (why each choice, so the three callers agree token for token):

* Left padding plus an `attention_mask` plus explicit `position_ids` (each row counts from 0 at
  its first real token), so a padded row sees exactly the positions it would see alone.
* A KV cache (transformers' `DynamicCache`, created by the model on `use_cache=True`): one prefill,
  then one token per row per step. `logits_to_keep=1` runs the vocabulary projection on the last
  position only.
* Rows leave the batch when they finish (stop token, length, or `should_stop`): the cache is
  shrunk with `Cache.batch_select_indices`, so finished rows stop costing compute, and the loop
  ends when no row is left.
* Per-row sampling, each row with its own seeded `torch.Generator`: a row's draws never depend on
  its neighbours, so batched sampling equals unbatched sampling for the same seed.
* The model is duck-typed: a transformers causal LM or a peft `PeftModel` around one (calls go
  through its `forward`, so LoRA/IA3/adapters are in force). Prompt and prefix tuning put virtual
  tokens in front of every forward and own the positions, so they take a slower path: one row at
  a time, no padding, no cache, the whole sequence re-run each step (correct, quadratic).

Greedy batched and one-by-one outputs agree: padding changes only the order of floating-point
sums (fp32 logits differed by at most 7.5e-6 on a sharpened tiny LLaMA), far below the gap
between top tokens; the tests assert equal token ids and logits within 1e-4.

    >>> stream = decode_stream(model, [[1, 2, 3], [4]], SamplingParams(max_new_tokens=8), pad_id=0)  # doctest: +SKIP
    >>> for step in stream:                                                                          # doctest: +SKIP
    ...     print(step)   # [(0, 17), (1, 42)], then [(0, 9), (1, 2)], ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

FINISH_STOP = "stop"
FINISH_LENGTH = "length"

Step = list[tuple[int, int]]


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_new_tokens: the most tokens generated (the stop token included); 0 generates none.
        temperature: 0 is greedy (argmax); above 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: sample among the fewest tokens whose probability reaches top_p.
        seed: seeds this request's own generator; None draws a fresh random seed.
        stop_ids: token ids that end the request (the stop token itself is emitted).
        choices: a closed answer set (`models.choice.ChoiceTrie`): only its answers can come out,
            and the row ends when one is complete; None decodes freely.
        prior: with `choices`, one weight per answer (`ChoiceTrie.prior_vector`), mixed into each
            step's distribution with `prior_weight` (`models.choice`); None: the model alone.
        prior_weight: the prior's share, 0 to 1.

    Example:
        >>> SamplingParams(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=1, stop_ids=(2,)).top_p
        0.9
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    choices: Any = field(default=None, compare=False)
    prior: tuple[float, ...] | None = field(default=None, compare=False)
    prior_weight: float = 0.0


@dataclass
class Generation:
    """One finished request.

    Attributes:
        token_ids: the generated ids; with finish_reason "stop" the last one is the stop token.
        finish_reason: "stop" (a stop id was produced) or "length" (max_new_tokens reached).
        prompt_tokens: the prompt's length in tokens.
        first_token_s: seconds from the start of its batch to its first token (prefill included).
        total_s: seconds from the start of its batch to its last token.
        confidence: with `SamplingParams.choices`, the probability of the answer within the set.
    """

    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    first_token_s: float
    total_s: float
    confidence: float | None = None


def decode_stream(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
                  pad_id: int, *, should_stop: Callable[[int], bool] | None = None,
                  confidences: dict[int, float] | None = None) -> Iterator[Step]:
    """Decode a batch of prompts together, one step at a time.

    Args:
        model: a causal LM (or a peft model around one), in eval mode.
        prompts: token ids of each prompt, each at least one token long.
        params: one `SamplingParams` for all rows, or one per row.
        pad_id: the id written into left padding (never attended to).
        should_stop: called with a row index after each step; True drops that row at once (a
            server cancelling a disconnected client). Nothing more is yielded for it.
        confidences: filled with `row -> probability of its answer` for the rows decoded with
            `SamplingParams.choices`, as each finishes.

    Returns:
        An iterator yielding, once per decoding step, the `(row, token_id)` pairs produced for
        the rows still running (row = index into `prompts`). A row ends after yielding one of its
        stop ids or its `max_new_tokens`-th token. Arguments are checked at call time.

    Raises:
        ValueError: an empty prompt, a params list of the wrong length, or a parameter out of
            range (temperature < 0, top_p not in (0, 1], max_new_tokens < 0).

    Example:
        >>> params = SamplingParams(max_new_tokens=4, stop_ids=(tok.eos_token_id,))        # doctest: +SKIP
        >>> [step for step in decode_stream(model, [[5, 6, 7]], params, tok.pad_token_id)]  # doctest: +SKIP
        [[(0, 81)], [(0, 12)], [(0, 12)], [(0, 3)]]
    """
    rows = _per_row(params, len(prompts))
    for prompt, p in zip(prompts, rows):
        check_request(prompt, p)
    stop = should_stop or (lambda _row: False)
    if is_prompt_learning(model):
        return _stream_uncached(model, prompts, rows, stop, confidences)
    return _stream_cached(model, prompts, rows, pad_id, stop, confidences)


def generate(model: Any, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
             pad_id: int, *, batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[Generation]:
    """Generate for many prompts in batches of similar length; results in input order.

    Args:
        model: as in `decode_stream`.
        prompts: token ids of each prompt.
        params: one `SamplingParams` for all, or one per prompt.
        pad_id: the padding id.
        batch_size: prompts decoded together.
        progress: called with the number of prompts each finished batch held (a progress bar).

    Returns:
        One `Generation` per prompt, in the order of `prompts`.

    Raises:
        ValueError: as in `decode_stream`, or batch_size < 1.

    Example:
        >>> gens = generate(model, [[5, 6], [7]], SamplingParams(max_new_tokens=16), pad_id=0)  # doctest: +SKIP
        >>> gens[0].finish_reason                                                           # doctest: +SKIP
        'length'
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = _per_row(params, len(prompts))
    # Sorting by length keeps padding (wasted compute) small inside each batch.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        gens = _generate_batch(model, [prompts[i] for i in batch], [rows[i] for i in batch], pad_id)
        for i, gen in zip(batch, gens):
            results[i] = gen
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


def _generate_batch(model: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
                    pad_id: int) -> list[Generation]:
    tokens: list[list[int]] = [[] for _ in prompts]
    first = [0.0] * len(prompts)
    last = [0.0] * len(prompts)
    confidences: dict[int, float] = {}
    start = time.perf_counter()
    for step in decode_stream(model, prompts, params, pad_id, confidences=confidences):
        now = time.perf_counter() - start
        for row, token in step:
            if not tokens[row]:
                first[row] = now
            tokens[row].append(token)
            last[row] = now
    return [Generation(ids, _finish_reason(ids, p), len(prompt), first[i], last[i], confidences.get(i))
            for i, (ids, p, prompt) in enumerate(zip(tokens, params, prompts))]


def _finish_reason(ids: list[int], params: SamplingParams) -> str:
    return FINISH_STOP if ids and ids[-1] in params.stop_ids else FINISH_LENGTH


# ---- checks ------------------------------------------------------------------------------------

def _per_row(params: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    rows = list(params)
    if len(rows) != n:
        raise ValueError(f"got {len(rows)} SamplingParams for {n} prompts")
    return rows


def check_request(prompt: Sequence[int], params: SamplingParams) -> None:
    """Refuse an empty prompt or out-of-range sampling settings with a `ValueError`."""
    if len(prompt) == 0:
        raise ValueError("a prompt is empty; every prompt needs at least one token")
    if params.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    if not 0 <= params.prior_weight <= 1:
        raise ValueError(f"prior_weight must be in [0, 1], got {params.prior_weight}")


def is_prompt_learning(model: Any) -> bool:
    """Whether `model` is a peft prompt/prefix-tuning model (virtual tokens: the uncached path)."""
    config = getattr(model, "active_peft_config", None) if hasattr(model, "peft_config") else None
    return bool(getattr(config, "is_prompt_learning", False))


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


# ---- sampling ----------------------------------------------------------------------------------

# Below this temperature logits / T overflows float32 to inf (multinomial then fails): decode
# greedily, as vLLM does. A top_p below float32's resolution would drop every token.
MIN_TEMPERATURE = 1e-5
MIN_TOP_P = 1e-6


class Sampler:
    """Picks one row's next token; owns the row's generator (rows never share draws) and its place
    in a closed answer set."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self.cursor = (params.choices.cursor(params.prior, params.prior_weight)
                       if params.choices is not None else None)
        self.generator: torch.Generator | None = None
        if params.temperature >= MIN_TEMPERATURE:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    @property
    def free(self) -> bool:
        """Greedy and unconstrained: the batch's vectorized argmax decides."""
        return self.generator is None and self.cursor is None

    @property
    def confidence(self) -> float | None:
        """The probability of the answer picked so far within the closed set (None: free decoding)."""
        return math.exp(self.cursor.log_prob) if self.cursor is not None else None

    def pick(self, logits: torch.Tensor) -> int:
        """Next token from one row's `[V]` logits."""
        if self.cursor is not None:
            return self._pick_choice(logits)
        return self._draw(logits)

    def _draw(self, logits: torch.Tensor) -> int:
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_p < 1:
            probs = _nucleus(probs, max(self.params.top_p, MIN_TOP_P))
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _pick_choice(self, logits: torch.Tensor) -> int:
        allowed = self.cursor.allowed(logits.device)
        log_p = self.cursor.log_probs(logits[allowed])
        j = self._draw(log_p) if len(allowed) > 1 else 0
        token = int(allowed[j])
        self.cursor.advance(token, float(log_p[j]))
        return token

    def finished(self, token: int) -> bool:
        """Whether the row ends after `token`: a stop id, or the end of a closed-set answer."""
        return token in self.params.stop_ids or (self.cursor is not None and self.cursor.done)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(descending=True)
    # Keep a token while the mass before it is below top_p: the most likely one always stays.
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[drop] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def pick_all(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """Each row's next token from `[B, V]` logits, row i by `samplers[i]`."""
    greedy = logits.argmax(-1).tolist()  # one vectorized argmax serves every free greedy row
    return [g if s.free else s.pick(logits[i]) for i, (s, g) in enumerate(zip(samplers, greedy))]


# ---- the cached, batched path ------------------------------------------------------------------

def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`(ids, attention_mask, position_ids)`, each `[B, longest]`, prompts aligned on the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.inference_mode()
def _stream_cached(model: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams], pad_id: int,
                   should_stop: Callable[[int], bool], confidences: dict[int, float] | None) -> Iterator[Step]:
    # The decorator (not a `with` block) re-enters inference mode around each step, so it never
    # leaks into the caller's code between yields. The state is a `RunningBatch` that nobody joins
    # (the server's continuous batching is the same object with joins); imported here because
    # running.py builds on this module's helpers.
    from domaintune.models.running import RunningBatch

    rows = [r for r, p in enumerate(params) if p.max_new_tokens > 0 and not should_stop(r)]
    if not rows:
        return
    batch = RunningBatch(model, pad_id, confidences=confidences)
    batch.add(rows, [prompts[r] for r in rows], [params[r] for r in rows])
    while batch:
        yield batch.pick()  # the caller sees a step's tokens before `should_stop` is asked
        batch.advance(should_stop)


# ---- prompt/prefix tuning: one row at a time, no cache -----------------------------------------

@torch.inference_mode()
def _stream_uncached(model: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
                     should_stop: Callable[[int], bool], confidences: dict[int, float] | None) -> Iterator[Step]:
    device = model_device(model)
    for row, (prompt, p) in enumerate(zip(prompts, params)):
        sampler, ids = Sampler(p, device), list(prompt)
        for _ in range(p.max_new_tokens):
            if should_stop(row):
                break
            x = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
            token = sampler.pick(logits[0, -1])
            done = sampler.finished(token)
            if done and confidences is not None and sampler.cursor is not None:
                confidences[row] = sampler.confidence
            yield [(row, token)]
            ids.append(token)
            if done:
                break
