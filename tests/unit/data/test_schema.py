"""Tests for domaintune.data.schema: validation rules, keep_last_turns and the record helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.schema import REJECT_REASONS, keep_last_turns, map_contents, record_text, validate_record


def _rec(*roles_contents: tuple[object, object], **meta: object) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in roles_contents], "metadata": dict(meta)}


def test_reject_reasons_cover_the_codes_the_pipeline_uses() -> None:
    needed = {"invalid_utf8", "invalid_json", "not_an_object", "unknown_format", "bad_field", "bad_role",
              "no_assistant", "empty_assistant", "empty_user", "alternation", "empty_text", "too_long",
              "role_injection", "invalid_csv", "wrong_column_count"}   # the last two: CSV/TSV reader errors
    assert needed <= set(REJECT_REASONS)
    assert all(isinstance(d, str) and d and "\n" not in d for d in REJECT_REASONS.values())


@pytest.mark.parametrize("rec", [
    _rec(("user", "q"), ("assistant", "a")),
    _rec(("system", ""), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")),
    {"text": "some text", "metadata": {}},
])
def test_valid_records(rec: dict) -> None:
    assert validate_record(rec) is None


@pytest.mark.parametrize("rec, reason, words", [
    (_rec(), "bad_field", "empty"),
    ({"messages": "x"}, "bad_field", "must be a list"),
    ({"messages": ["x"]}, "bad_field", "message 0 must be an object"),
    (_rec(("user", "q"), ("tool", "a")), "bad_role", "message 1 has role 'tool'"),
    (_rec(("user", "q"), ("assistant", None)), "bad_field", "message 1 content"),
    (_rec(("system", "s"), ("user", "q")), "no_assistant", "no assistant"),
    (_rec(("assistant", "a"),), "alternation", "message 0: expected user, got assistant"),
    (_rec(("user", "q"), ("system", "s"), ("assistant", "a")), "alternation", "system is only allowed as message 0"),
    (_rec(("user", "q"), ("user", "q"), ("assistant", "a")), "alternation", "message 1: expected assistant"),
    (_rec(("user", "q"), ("assistant", "a"), ("user", "q2")), "alternation", "must end with an assistant"),
    (_rec(("user", "q"), ("assistant", " \n")), "empty_assistant", "message 1"),
    (_rec(("user", ""), ("assistant", "a")), "empty_user", "message 0"),
    ({"text": "  "}, "empty_text", "empty"),
    ({"text": 3}, "bad_field", "'text' must be a string"),
    ({"metadata": {}}, "unknown_format", "neither"),
    ([], "not_an_object", "list"),
])
def test_each_rule(rec: object, reason: str, words: str) -> None:
    problem = validate_record(rec)
    assert problem is not None and problem[0] == reason and words in problem[1]


def test_alternation_is_checked_before_empty_contents() -> None:
    assert validate_record(_rec(("user", ""), ("user", "q"), ("assistant", "a")))[0] == "alternation"


_content = st.one_of(st.text(max_size=4), st.none(), st.integers(), st.lists(st.text(max_size=2), max_size=2))
_role = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), st.none(), st.integers(),
                  st.lists(st.integers(), max_size=1))
_message = st.one_of(st.fixed_dictionaries({"role": _role, "content": _content}),
                     st.dictionaries(st.sampled_from(["role", "content", "x"]), _content, max_size=3), _content)


@settings(max_examples=150, deadline=None)
@given(st.lists(_message, max_size=6))
def test_validate_never_raises_and_returns_known_reasons(messages: list) -> None:
    problem = validate_record({"messages": messages, "metadata": {}})
    assert problem is None or (problem[0] in REJECT_REASONS and isinstance(problem[1], str))
    if problem is None:
        assert messages[-1]["role"] == "assistant"


def _conversation() -> dict:
    return _rec(("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"),
                ("user", "u3"), ("assistant", "a3"), id=1)


@pytest.mark.parametrize("k, kept", [
    (1, ["s", "u3", "a3"]), (2, ["s", "u2", "a2", "u3", "a3"]), (3, ["s", "u1", "a1", "u2", "a2", "u3", "a3"]),
    (10, ["s", "u1", "a1", "u2", "a2", "u3", "a3"]), (0, ["s", "u1", "a1", "u2", "a2", "u3", "a3"]),
    (-1, ["s", "u1", "a1", "u2", "a2", "u3", "a3"]),
])
def test_keep_last_turns(k: int, kept: list[str]) -> None:
    rec = _conversation()
    out = keep_last_turns(rec, k)
    assert [m["content"] for m in out["messages"]] == kept
    assert out["metadata"] is rec["metadata"] and len(rec["messages"]) == 7   # input untouched


def test_keep_last_turns_without_system_and_on_text_records() -> None:
    rec = _rec(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"))
    assert [m["content"] for m in keep_last_turns(rec, 1)["messages"]] == ["u2", "a2"]
    text = {"text": "t", "metadata": {}}
    assert keep_last_turns(text, 1) == text


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=6), st.booleans())
def test_keep_last_turns_keeps_valid_records_valid(n: int, k: int, system: bool) -> None:
    pairs = [("system", "s")] if system else []
    pairs += [p for i in range(n) for p in (("user", f"u{i}"), ("assistant", f"a{i}"))]
    out = keep_last_turns(_rec(*pairs), k)
    assert validate_record(out) is None
    assert sum(m["role"] == "user" for m in out["messages"]) == min(n, k)
    assert (out["messages"][0]["role"] == "system") == system


def test_record_text() -> None:
    assert record_text(_rec(("user", "q"), ("assistant", "a"))) == "q\na"
    assert record_text({"text": "中文", "metadata": {}}) == "中文"


def test_map_contents_applies_fn_with_roles_and_shares_metadata() -> None:
    rec = _rec(("system", "s"), ("user", "q"), ("assistant", "a"), id=1)
    out = map_contents(rec, lambda role, text: f"{role}:{text.upper()}")
    assert [m["content"] for m in out["messages"]] == ["system:S", "user:Q", "assistant:A"]
    assert rec["messages"][1]["content"] == "q" and out["metadata"] is rec["metadata"]
    text = {"text": "t", "metadata": {"a": 1}}
    assert map_contents(text, lambda role, t: role + t) == {"text": "textt", "metadata": {"a": 1}}
