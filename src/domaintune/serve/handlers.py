"""The completion endpoints: validate a request, plan its rows, run it on the engine, answer.

One flow serves /v1/chat/completions and /v1/completions, plain or streamed:

1. `plan_*` validates the body (`schemas.parse_body`), the model name, and the lengths against the
   context, and turns the request into prompt ids (chat: the training template via `Codec`) and
   one `SamplingParams` per row (`n` rows per prompt; row i is choice i).
2. `Run.start` submits a `Job` to the engine (429 when its queue is full) before any byte of the
   answer is sent, so refusals keep their status code even for streams.
3. `Run.deltas` turns engine events into `(row, text, finish_reason)` through one `TextStream` per
   row, tells the engine to drop a row once its text hits a stop string, notices a client that
   went away (and cancels its job, freeing its rows), and raises `ApiError` for a deadline (504)
   or a failed batch (500).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError

from domaintune.data.injection import find_control_tokens
from domaintune.errors import UserError
from domaintune.models.decode import SamplingParams
from domaintune.serve.adapters import ServedModels
from domaintune.serve.codec import TextStream
from domaintune.serve.engine import Engine, Failed, Finished, Job, QueueFull, ShuttingDown, Tokens
from domaintune.serve.options import ServeOptions
from domaintune.serve.schemas import ApiError, ChatRequest, CompletionRequest, new_id

POLL_S = 0.25  # how often a waiting request checks whether its client is still there
GREEDY_BELOW = 1e-5  # temperatures under this decode greedily
TOP_P_MIN = 1e-6


_GONE = object()  # queued by `Run.client_gone`


async def watch_disconnect(receive: Any, run: Run) -> None:
    """Wait for the client's `http.disconnect` and tell `run`; cancel this task when the answer is sent.

    Only for answers sent whole: after the body has been read nothing else listens on `receive`
    (a streamed answer has Starlette's own listener), so the hang-up is seen at once, not at the
    next poll.
    """
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            run.client_gone()
            return


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


@dataclass
class Plan:
    """A validated request, ready for the engine (row i is choice i)."""

    endpoint: str
    rid: str
    model: str
    prompts: list[list[int]]
    params: list[SamplingParams]
    stops: tuple[str, ...]
    prompt_tokens: int
    logged_prompt: Any
    stream: bool
    include_usage: bool
    arrived: float = field(default_factory=time.monotonic)
    retrieved: list[int] | None = None  # the knowledge-base entries the prompt showed
    request: Any = field(default=None, repr=False)  # the validated chat request (serve/shadow.py re-plans it)

    def cache_key(self) -> Hashable | None:
        """The response-cache key, or None for a request that is not deterministic (or decodes
        inside a closed set: its answer carries a confidence the cache does not keep)."""
        if any(p.temperature > 0 or p.choices is not None for p in self.params):
            return None
        return (self.endpoint, self.model, tuple(tuple(p) for p in self.prompts),
                tuple(p.max_new_tokens for p in self.params), self.stops)


def plan_chat(req: ChatRequest, served: ServedModels, options: ServeOptions, shadow: bool = False) -> Plan:
    """Validate a chat request and turn it into a `Plan` (`shadow`: for a hidden shadow route).

    Raises:
        ApiError: 400 naming the field: unknown model, a control token in a message, a prompt
            or `max_tokens` beyond the context or the limits, `n` too large.
    """
    _check_model(req.model, served, shadow)
    route = served.routes[req.model]
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    texts = [(f"messages.{i}.content", m["role"], m["content"]) for i, m in enumerate(messages)]
    for param, role, text in texts + [(f"guided_choice.{i}", "assistant", c)
                                      for i, c in enumerate(req.guided_choice or ())]:
        # The same guard prepare applies: the template's markers and every token the tokenizer added.
        forged = find_control_tokens(text, role, served.guard)
        if forged:
            raise ApiError(400, f"{param} contains the control token {forged[0]!r}", param=param)
    retrieved, shown = None, messages
    if route.knowledge is not None:  # the entries the run trained with, rendered as in training
        shown, retrieved = route.knowledge.apply(messages, served.tokenizer, served.guard)
    try:
        prompt = served.codec.chat_prompt(shown)
    except UserError as err:
        raise ApiError(400, err.message, param="messages") from None
    except TemplateError as err:  # a model's own Jinja template refusing a conversation shape
        raise ApiError(400, f"the model's chat template refused these messages: {err}", param="messages") from None
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    trie = _choices(req.guided_choice or (route.labels if options.closed_set == "auto" else None), served)
    if trie is not None:  # room for the longest answer of the set
        limit = max(limit or 0, trie.depth)
    prior = None
    if trie is not None and route.prior is not None and tuple(trie.answers) == route.labels:
        # the run's own answer set: its neighbour vote mixed in as eval mixes it (serve.knowledge)
        prior = (route.prior.vector(messages, trie), route.prior.weight)
    plan = _plan("chat.completions", "chatcmpl", req, [prompt], "messages", (param, limit), messages,
                 served, options, trie, prior)
    plan.retrieved, plan.request = retrieved, req
    return plan


def _choices(choices: Any, served: ServedModels) -> Any:
    if not choices:
        return None
    try:
        return served.tries.get(choices)
    except UserError as err:
        raise ApiError(400, f"guided_choice: {err.message}", param="guided_choice") from None


def plan_completion(req: CompletionRequest, served: ServedModels, options: ServeOptions) -> Plan:
    """Validate a /v1/completions request and turn it into a `Plan`.

    Raises:
        ApiError: as `plan_chat`, plus an empty prompt or token ids outside the vocabulary.
    """
    _check_model(req.model, served)
    if (req.model_extra or {}).get("guided_choice") is not None:
        raise ApiError(400, "guided_choice: supported on /v1/chat/completions only", param="guided_choice")
    if isinstance(req.prompt, str):
        texts, prompts = [req.prompt], [served.codec.encode_text(req.prompt)]
    elif req.prompt and all(isinstance(x, str) for x in req.prompt):
        texts, prompts = list(req.prompt), [served.codec.encode_text(t) for t in req.prompt]
    else:
        vocab = served.vocab_size
        if any(not 0 <= t < vocab for t in req.prompt):
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        texts, prompts = [served.tokenizer.decode(req.prompt)], [list(req.prompt)]
    if any(not p for p in prompts):
        raise ApiError(400, "prompt: a prompt is empty", param="prompt")
    logged = texts[0] if isinstance(req.prompt, str) else texts
    return _plan("completions", "cmpl", req, prompts, "prompt", ("max_tokens", req.max_tokens), logged,
                 served, options)


def _plan(endpoint: str, prefix: str, req: Any, prompts: list[list[int]], prompt_param: str,
          max_tokens: tuple[str, int | None], logged: Any, served: ServedModels, options: ServeOptions,
          trie: Any = None, prior: tuple[tuple[float, ...], float] | None = None) -> Plan:
    if req.n > options.max_n or len(prompts) * req.n > options.max_n:
        param = "n" if req.n > options.max_n else prompt_param
        raise ApiError(400, f"{param}: at most {options.max_n} choices per request", param=param)
    lengths = [_max_new_tokens(len(p), max_tokens, prompt_param, served.max_context, options) for p in prompts]
    temperature = served.default_temperature if req.temperature is None else req.temperature
    if temperature < GREEDY_BELOW:  # as vLLM does: logits / 1e-300 overflow to inf, and mean greedy anyway
        temperature = 0.0
    # A top_p under float32's range reads as 0 in the decoder and drops every token; any top_p
    # below the top token's probability (>= 1/vocab) keeps that token alone, as 1e-6 does.
    top_p = max(served.default_top_p if req.top_p is None else req.top_p, TOP_P_MIN)
    vector, weight = prior or (None, 0.0)
    rows, params = [], []
    for prompt, length in zip(prompts, lengths):
        for j in range(req.n):
            # n different samples, each reproducible; kept inside the generator's 64-bit seed range.
            seed = None if req.seed is None else (req.seed + j) % 2**64
            rows.append(prompt)
            params.append(SamplingParams(length, temperature, top_p, seed, served.codec.stop_ids, trie,
                                         prior=vector, prior_weight=weight))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Plan(endpoint, new_id(prefix), req.model, rows, params, tuple(req.stop_list()),
                sum(len(p) for p in prompts), logged, req.stream, include_usage)


def _check_model(name: str, served: ServedModels, shadow: bool = False) -> None:
    if name not in served.routes or (name in served.shadows.values() and not shadow):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ApiError(400, f"model '{shown}' is not served; available: {', '.join(served.names)}",
                       param="model", code="model_not_found")


def _max_new_tokens(prompt_len: int, max_tokens: tuple[str, int | None], prompt_param: str, context: int,
                    options: ServeOptions) -> int:
    param, asked = max_tokens
    if prompt_len >= context:
        raise ApiError(400, f"{prompt_param}: the prompt is {prompt_len} tokens; this model's context is "
                       f"{context}", param=prompt_param, code="context_length_exceeded")
    if asked is None:
        return min(options.default_max_tokens, context - prompt_len)
    if asked > options.max_tokens_limit:
        raise ApiError(400, f"{param}: at most {options.max_tokens_limit}", param=param)
    if prompt_len + asked > context:
        raise ApiError(400, f"{param}: the prompt ({prompt_len} tokens) plus {param} ({asked}) exceeds this "
                       f"model's context of {context} tokens", param=param, code="context_length_exceeded")
    return asked


class Run:
    """One planned request on the engine: submit it, then read its text as it is generated.

    Args:
        plan: the validated request.
        served: the served models (for the tokenizer).
        engine: the batching engine.
        timeout_s: the request's deadline, from its arrival.
        is_disconnected: an async callable telling whether the client went away.
        cached: a finished result from the response cache (skips the engine).
    """

    def __init__(self, plan: Plan, served: ServedModels, engine: Engine, timeout_s: float,
                 is_disconnected: Any, cached: tuple[list[str], list[str], int] | None = None) -> None:
        self.plan, self.engine, self.is_disconnected, self.cached = plan, engine, is_disconnected, cached
        self.streams: list[TextStream] = [served.codec.stream(plan.stops) for _ in plan.prompts]
        self.texts = [""] * len(plan.prompts)
        self.reasons: list[str | None] = [None] * len(plan.prompts)
        self.confidences: list[float | None] = [None] * len(plan.prompts)
        self.first_token_s: float | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._job: Job | None = None
        self._deadline = plan.arrived + timeout_s

    @property
    def completion_tokens(self) -> int:
        """Tokens generated over all rows (stop tokens included)."""
        return self.cached[2] if self.cached else sum(s.n_tokens for s in self.streams)

    def start(self, retry_after_s: int) -> None:
        """Submit the job (a cached result needs none).

        Raises:
            ApiError: 429 with Retry-After when the queue is full; 503 when shutting down.
        """
        if self.cached:
            return
        self._loop = asyncio.get_running_loop()
        self._job = Job(self.plan.model, self.plan.prompts, self.plan.params, emit=self._emit,
                        deadline=self._deadline)
        try:
            self.engine.submit(self._job)
        except QueueFull:
            raise ApiError(429, "the server is busy: too many requests waiting; retry later",
                           kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(retry_after_s)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down") from None

    def _emit(self, event: Any) -> None:
        # Called from the engine's thread: hand the event to this request's event loop.
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    def cancel(self) -> None:
        """Free the job's rows (idempotent; a finished job ignores it)."""
        if self._job is not None:
            self._job.cancel()

    def client_gone(self) -> None:
        """The client hung up (seen by `watch_disconnect`): free the rows and wake `deltas`."""
        self.cancel()
        self._queue.put_nowait(_GONE)

    async def deltas(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """Yield `(row, new_text, finish_reason)`; finish_reason is set once per row, last.

        Raises:
            ApiError: 504 when the deadline passed, 500 when generation failed.
            ClientGone: the client disconnected (its job is cancelled).
        """
        if self.cached:
            for row, (text, reason) in enumerate(zip(*self.cached[:2])):
                self._record(row, text, reason)
                yield row, text, reason
            return
        open_rows = len(self.plan.prompts)
        while open_rows:
            event = await self._next_event()
            if event is _GONE:
                raise ClientGone()
            if isinstance(event, Failed):
                raise ApiError(500, event.message, kind="server_error", code="generation_failed")
            if isinstance(event, Tokens):
                for row, token in event.pairs:
                    text = self._push(row, token)
                    if text:
                        yield row, text, None
                continue
            text, reason = self._finish(event)
            open_rows -= 1
            yield event.row, text, reason

    def _push(self, row: int, token: int) -> str:
        stream = self.streams[row]
        text = stream.push(token)
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.plan.arrived
        if stream.finish_reason == "stop" and self._job is not None:
            self._job.stop_row(row)  # a stop string: no need to decode this row further
        self.texts[row] += text
        return text

    def _finish(self, event: Finished) -> tuple[str, str]:
        stream = self.streams[event.row]
        if stream.finish_reason == "stop":
            reason = "stop"
        elif event.reason in ("stop", "length"):
            reason = event.reason
        elif event.reason == "deadline":
            raise ApiError(504, "the request's deadline passed before generation finished",
                           kind="timeout_error", code="deadline_exceeded")
        else:
            raise ClientGone()
        text = stream.flush()
        self.confidences[event.row] = event.confidence
        self._record(event.row, text, reason)
        return text, reason

    def _record(self, row: int, text: str, reason: str) -> None:
        if self.cached:
            self.texts[row] = text
        else:
            self.texts[row] += text
        self.reasons[row] = reason

    async def _next_event(self) -> Any:
        while True:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            try:
                return await asyncio.wait_for(self._queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if await self.is_disconnected():
                    self.cancel()
                    raise ClientGone() from None
