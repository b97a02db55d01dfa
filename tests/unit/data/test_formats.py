"""Tests for domaintune.data.formats: every record shape -> the exact canonical record, and each error."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.formats import RECORD_FORMATS, RecordError, detect_record_format, to_canonical
from domaintune.data.readers import read_rows
from domaintune.data.schema import REJECT_REASONS, validate_record
from domaintune.errors import UserError

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _chat(*pairs: tuple[str, str], **metadata: object) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], "metadata": dict(metadata)}


def _error(obj: dict, record_format: str = "auto") -> RecordError:
    with pytest.raises(RecordError) as err:
        to_canonical(obj, record_format)
    assert err.value.reason in REJECT_REASONS and "\n" not in err.value.detail
    return err.value


# --- each shape ---------------------------------------------------------------------------------

def test_openai_messages_with_text_parts_and_extra_message_keys() -> None:
    obj = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "a"}, "b"], "name": "x"},
                        {"role": "assistant", "content": "c", "weight": 0}], "id": 3}
    assert to_canonical(obj) == _chat(("system", "Be brief."), ("user", "a\nb"), ("assistant", "c"), id=3)


def test_conversation_merges_its_metadata() -> None:
    obj = {"conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "metadata": {"domain": "legal"}, "id": "c1"}
    assert to_canonical(obj) == _chat(("user", "q"), ("assistant", "a"), id="c1", domain="legal")


def test_sharegpt_maps_roles_and_top_level_system() -> None:
    obj = {"system": "sys", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
           "source": "web"}
    assert to_canonical(obj) == _chat(("system", "sys"), ("user", "q"), ("assistant", "a"), source="web")


def test_sharegpt_empty_system_is_dropped_and_role_content_turns_accepted() -> None:
    obj = {"system": "", "conversations": [{"role": "user", "content": "q"}, {"from": "bot", "value": "a"}]}
    assert to_canonical(obj) == _chat(("user", "q"), ("assistant", "a"))


@pytest.mark.parametrize("obj, user", [
    ({"instruction": "Do X.", "input": "", "output": "done"}, "Do X."),
    ({"instruction": "Do X.", "output": "done"}, "Do X."),
    ({"instruction": "Do X.", "input": None, "output": "done"}, "Do X."),
    ({"instruction": "Do X.", "input": "data", "output": "done"}, "Do X.\n\ndata"),
    ({"instruction": "", "input": "data", "output": "done"}, "data"),
])
def test_alpaca_instruction_and_input(obj: dict, user: str) -> None:
    assert to_canonical(obj) == _chat(("user", user), ("assistant", "done"))


def test_alpaca_history_and_system_come_first() -> None:
    obj = {"system": "s", "history": [["q1", "a1"], ("q2", "a2")], "instruction": "q3", "output": "a3", "label": 1}
    assert to_canonical(obj) == _chat(("system", "s"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                                      ("assistant", "a2"), ("user", "q3"), ("assistant", "a3"), label=1)


def test_text_record_keeps_chinese_intact() -> None:
    assert to_canonical({"text": "中文 内容", "lang": "zh"}) == {"text": "中文 内容", "metadata": {"lang": "zh"}}


def test_metadata_that_is_not_a_dict_is_kept_under_its_key() -> None:
    assert to_canonical({"text": "t", "metadata": "note"})["metadata"] == {"metadata": "note"}


@pytest.mark.parametrize("role, mapped", [
    ("user", "user"), ("human", "user"), ("Human", "user"), ("assistant", "assistant"), ("gpt", "assistant"),
    ("GPT", "assistant"), ("model", "assistant"), ("bot", "assistant"), ("chatgpt", "assistant"),
    ("system", "system"),
])
def test_role_mapping(role: str, mapped: str) -> None:
    rec = to_canonical({"conversations": [{"from": role, "value": "x"}]})
    assert rec["messages"] == [{"role": mapped, "content": "x"}]


# --- detection ----------------------------------------------------------------------------------

@pytest.mark.parametrize("obj, fmt", [
    ({"messages": [], "text": "t"}, "messages"), ({"conversation": []}, "conversation"),
    ({"conversations": []}, "sharegpt"), ({"instruction": "i", "text": "t"}, "alpaca"), ({"text": ""}, "text"),
    ({"question": "q", "answer": "a"}, None), ({}, None),
])
def test_detect_record_format(obj: dict, fmt: str | None) -> None:
    assert detect_record_format(obj) == fmt
    assert fmt is None or fmt in RECORD_FORMATS


def test_explicit_format_must_match() -> None:
    assert to_canonical({"text": "t"}, "text") == {"text": "t", "metadata": {}}
    err = _error({"text": "t"}, "alpaca")
    assert err.reason == "unknown_format" and "instruction" in err.detail


def test_unknown_format_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown record format"):
        to_canonical({"text": "t"}, "chatml")


# --- errors -------------------------------------------------------------------------------------

def test_unknown_shape_lists_keys_and_accepted_shapes() -> None:
    err = _error({"question": "q", "answer": "a"})
    assert err.reason == "unknown_format"
    assert "[answer, question]" in err.detail and "Alpaca" in err.detail and "ShareGPT" in err.detail


@pytest.mark.parametrize("role", ["tool", "function", "observation", None, 3])
def test_unknown_role_is_bad_role(role: object) -> None:
    err = _error({"messages": [{"role": "user", "content": "q"}, {"role": role, "content": "a"}]})
    assert err.reason == "bad_role" and repr(role) in err.detail and "messages[1]" in err.detail


@pytest.mark.parametrize("obj, words", [
    ({"messages": "hi"}, "'messages' must be a list"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "user", "content": 3}]}, "content must be a string"),
    ({"messages": [{"role": "user"}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "'image_url'"),
    ({"conversation": {"role": "user"}}, "'conversation' must be a list"),
    ({"conversations": [{"from": "human", "value": None}]}, "conversations[0] content"),
    ({"conversations": [], "system": ["s"]}, "'system' must be a string"),
    ({"instruction": "i"}, "missing 'output'"),
    ({"instruction": "i", "output": 4}, "'output' must be a string"),
    ({"instruction": None, "output": "o"}, "'instruction' must be a string"),
    ({"instruction": "i", "input": 1, "output": "o"}, "'input' must be a string"),
    ({"instruction": "i", "output": "o", "history": [["q"]]}, "history[0]"),
    ({"instruction": "i", "output": "o", "history": "q"}, "'history' must be a list"),
    ({"text": ["t"]}, "'text' must be a string"),
])
def test_wrong_types_are_bad_field(obj: dict, words: str) -> None:
    err = _error(obj)
    assert err.reason == "bad_field" and words in err.detail


def test_record_error_carries_reason_and_detail() -> None:
    err = RecordError("bad_field", "missing 'output'")
    assert (err.reason, err.detail, str(err)) == ("bad_field", "missing 'output'", "bad_field: missing 'output'")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=10)
_keys = st.sampled_from(["messages", "conversation", "conversations", "instruction", "input", "output", "text",
                         "system", "history", "metadata", "role", "content", "from", "value", "id"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _json | st.lists(st.dictionaries(_keys, _json, max_size=3), max_size=3), max_size=5))
def test_to_canonical_returns_a_json_record_or_a_known_reason(obj: dict) -> None:
    try:
        rec = to_canonical(obj)
    except RecordError as err:
        assert err.reason in REJECT_REASONS
        return
    json.dumps(rec)
    assert set(rec) in ({"messages", "metadata"}, {"text", "metadata"})
    if "messages" in rec:
        assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                   for m in rec["messages"])


# --- the messy asset, at the reader + format + schema level ---------------------------------------

def test_messy_asset_fates() -> None:
    expected = json.loads((ASSETS / "messy.expected.json").read_text(encoding="utf-8"))["rows"]
    fates = {}
    for row in read_rows(str(ASSETS / "messy.jsonl"), "messy"):
        if row.obj is None:
            fates[row.line] = {"status": "reject", "reason": row.error}
            continue
        try:
            problem = validate_record(to_canonical(row.obj))
        except RecordError as err:
            problem = (err.reason, err.detail)
        fmt = detect_record_format(row.obj)
        fates[row.line] = {"status": "reject", "reason": problem[0]} if problem else {"status": "ok", "format": fmt}
    assert fates == {r["line"]: {k: r[k] for k in ("status", "reason", "format") if k in r} for r in expected}


def test_messy_asset_duplicates_are_what_their_tags_say() -> None:
    expected = json.loads((ASSETS / "messy.expected.json").read_text(encoding="utf-8"))["rows"]
    rows = {r.line: r for r in read_rows(str(ASSETS / "messy.jsonl"), "messy")}
    for entry in expected:
        for tag in entry["tags"]:
            kind, _, of = tag.partition(":")
            this, orig = rows[entry["line"]], rows.get(int(of)) if of.isdigit() else None
            if kind == "dup_of":
                assert this.raw == orig.raw
            elif kind == "canonical_dup_of":
                assert this.raw != orig.raw and to_canonical(this.obj) == to_canonical(orig.obj)
            elif kind == "near_dup_of":
                a, b = to_canonical(this.obj)["messages"][-1]["content"], to_canonical(orig.obj)["messages"][-1]["content"]
                assert a != b and len(a) > 100 and difflib.SequenceMatcher(None, a, b).ratio() > 0.95
