"""The wire format of the OpenAI-compatible API: request models, response bodies, error JSON.

Bodies are validated in pydantic's strict JSON mode, as OpenAI does: `"max_tokens": "5"` or
`"stream": "yes"` is a 400, not a silent conversion. Every failure becomes an `ApiError`, whose
JSON is OpenAI's `{"error": {"message", "type", "param", "code"}}` with `param` naming the field
(`messages.0.role`, `max_tokens`), so clients that parse OpenAI errors show it unchanged.

Only what the server implements is accepted: fields it cannot honour (`logprobs`, `tools`, ...)
are refused by name rather than ignored; unknown fields are ignored, as clients add new ones.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4  # OpenAI's own limit on `stop` sequences
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "tool_choice", "function_call", "echo",
               "suffix", "logit_bias", "audio", "prediction")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON.

    Args:
        status: the HTTP status code.
        message: what went wrong, for the client.
        param: the request field at fault, if any.
        kind: OpenAI's error `type` ("invalid_request_error", "rate_limit_error", ...).
        code: a short machine-readable code, if any.
        headers: extra response headers (Retry-After, WWW-Authenticate).

    Example:
        >>> ApiError(400, "must be at most 2", param="temperature").body()["error"]["param"]
        'temperature'
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code, self.headers = kind, code, headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string: text parts joined with a newline, as `prepare` joins them
        (`data/formats.py`) and vLLM flattens them, so a served prompt is the one trained on."""
        from domaintune.data.formats import PART_SEPARATOR

        return self.content if isinstance(self.content, str) else PART_SEPARATOR.join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions (bounds that need the server's
    settings, such as the largest `max_tokens`, are checked by the handler)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None

    def stop_list(self) -> list[str]:
        """`stop` as a list (a string is one sequence)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # vLLM's field: the answer is one of these strings (decoded inside them, with its probability).
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=5000)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]


def parse_body(model: type[_Sampling], raw: bytes) -> Any:
    """Validate a raw JSON body into `model`, raising a 400 `ApiError` naming the field.

    Args:
        model: `ChatRequest` or `CompletionRequest`.
        raw: the request body.

    Returns:
        The validated request.

    Raises:
        ApiError: not JSON, not an object, a wrong type or out-of-range value, an unsupported
            field, more than `MAX_STOP` stop sequences, or non-zero penalties.

    Example:
        >>> parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}').n
        1
    """
    try:
        request = model.model_validate_json(raw)
    except ValidationError as err:
        raise _from_validation(err) from None
    _check_supported(request)
    return request


def _from_validation(err: ValidationError) -> ApiError:
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first['msg']}")
    if not first["loc"]:
        return ApiError(400, "the body must be a JSON object")
    param = ".".join(str(part) for part in first["loc"])
    return ApiError(400, f"{param}: {first['msg']}", param=param)


def _check_supported(request: _Sampling) -> None:
    extra = request.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name) not in (None, False, 0, [], {}, ""):
            raise ApiError(400, f"{name} is not supported by this server", param=name)
    if extra.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, 'response_format: only {"type": "text"} is supported by this server (for answers '
                            'from a fixed list, send guided_choice)', param="response_format")
    if extra.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of is not supported by this server (use n for several answers)", param="best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise ApiError(400, f"{name} is not supported by this server (use 0)", param=name)
    stops = request.stop_list()
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(400, f"stop: give at most {MAX_STOP} non-empty sequences", param="stop")


# ---- responses ---------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    """A fresh response id such as "chatcmpl-3f2a…"."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(rid: str, obj: str, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The fields every response and chunk shares around its `choices`."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices, **extra}


def chat_choice(index: int, text: str, finish_reason: str | None, confidence: float | None = None) -> dict[str, Any]:
    """One choice of a chat.completion (`confidence`: the answer's probability inside a closed set)."""
    choice = {"index": index, "message": {"role": "assistant", "content": text},
              "finish_reason": finish_reason, "logprobs": None}
    return {**choice, "confidence": confidence} if confidence is not None else choice


def chat_delta(index: int, delta: dict[str, str], finish_reason: str | None = None,
               confidence: float | None = None) -> dict[str, Any]:
    """One choice of a chat.completion.chunk (the last chunk of a closed-set row has its `confidence`)."""
    choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return {**choice, "confidence": confidence} if confidence is not None else choice


def text_choice(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a text_completion (whole or chunk)."""
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
