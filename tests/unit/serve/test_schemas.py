"""Tests for serve/schemas.py: strict parsing, the field named in every 400, response shapes."""

from __future__ import annotations

import json

import pytest

from domaintune.serve.schemas import (ApiError, ChatRequest, CompletionRequest, chat_choice, envelope, parse_body,
                                      usage)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse(body, model=ChatRequest):
    return parse_body(model, json.dumps(body).encode() if not isinstance(body, bytes) else body)


def test_a_minimal_chat_request_gets_defaults():
    req = parse(CHAT)
    assert (req.n, req.stream, req.temperature, req.max_tokens) == (1, False, None, None)
    assert req.messages[0].text() == "hi"


def test_text_parts_are_joined_with_a_newline_as_prepare_joins_them():
    from domaintune.data.formats import to_canonical

    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = {**CHAT, "messages": [{"role": "user", "content": parts}]}
    prepared = to_canonical({"messages": [{"role": "user", "content": parts},
                                              {"role": "assistant", "content": "c"}]})
    assert parse(body).messages[0].text() == "a\nb" == prepared["messages"][0]["content"]


@pytest.mark.parametrize("patch, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "0.5"}, "temperature"),  # strict: no string-to-number conversion
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),  # strict: a bool is not an int
    ({"n": 0}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"model": ""}, "model"),
    ({"model": 3}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"best_of": 3}, "best_of"),
])
def test_bad_fields_are_named(patch, param):
    with pytest.raises(ApiError) as info:
        parse({**CHAT, **patch})
    assert info.value.status == 400 and info.value.param == param
    assert info.value.body()["error"]["param"] == param


def test_missing_model_is_named():
    with pytest.raises(ApiError) as info:
        parse({"messages": CHAT["messages"]})
    assert info.value.param == "model"


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"text"', b"null", b'{"model": NaN}', b"\xff\xfe",
                                 b"[" * 10_000 + b"]" * 10_000])
def test_non_objects_and_broken_json_are_400(raw):
    with pytest.raises(ApiError) as info:
        parse(raw)
    assert info.value.status == 400


def test_unknown_fields_are_ignored_and_zero_penalties_allowed():
    req = parse({**CHAT, "some_new_field": 1, "presence_penalty": 0, "logprobs": False, "user": "u1",
                 "response_format": {"type": "text"}, "best_of": 1})
    assert req.model == "m"


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3]])
def test_completion_prompts(prompt):
    assert parse({"model": "m", "prompt": prompt}, CompletionRequest).prompt == prompt


def test_completion_prompt_of_mixed_types_is_refused():
    with pytest.raises(ApiError) as info:
        parse({"model": "m", "prompt": ["a", 1]}, CompletionRequest)
    assert info.value.param.startswith("prompt")


def test_response_shapes():
    body = envelope("id-1", "chat.completion", "m", [chat_choice(0, "hi", "stop")], usage=usage(3, 2))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
