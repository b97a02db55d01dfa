"""Every record shape users bring -> one canonical record.

Accepted shapes (`RECORD_FORMATS`), detected from the keys present, in this order:

- messages:     ``{"messages": [{"role", "content"}, ...]}`` (OpenAI; content may be a list of text parts)
- conversation: ``{"conversation": [{"role", "content"}, ...], "metadata": {...}}``
- sharegpt:     ``{"conversations": [{"from", "value"}, ...], "system"?: str}``
- alpaca:       ``{"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}``
- text:         ``{"text": str}`` (continued pre-training)

The result is ``{"messages": [...], "metadata": {...}}`` or ``{"text": ..., "metadata": {...}}``; every
top-level key that is not part of the shape (id, domain, label, ...) is kept in metadata. Problems
raise `RecordError` with a code from `schema.REJECT_REASONS`, so the row lands in the rejects file.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from domaintune.errors import UserError

RECORD_FORMATS = ("messages", "conversation", "sharegpt", "alpaca", "text")

# The key that marks each shape, in detection order: a row holding both "messages" and "text" is a
# chat row whose "text" goes to metadata.
_MARKER = {"messages": "messages", "conversation": "conversation", "sharegpt": "conversations",
           "alpaca": "instruction", "text": "text"}
_OWN_KEYS = {
    "messages": frozenset({"messages", "metadata"}),
    "conversation": frozenset({"conversation", "metadata"}),
    "sharegpt": frozenset({"conversations", "system", "metadata"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history", "metadata"}),
    "text": frozenset({"text", "metadata"}),
}
_ROLE_MAP = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant",
}
_ACCEPTED = ("messages [{role, content}], conversation [{role, content}], conversations [{from, value}] "
             "(ShareGPT), instruction/input/output (Alpaca), text")


class RecordError(Exception):
    """A row whose shape or fields cannot become a canonical record.

    Attributes:
        reason: a code from `schema.REJECT_REASONS`.
        detail: one line saying what is wrong, for the rejects file.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Text parts of one message are joined with a newline, as vLLM flattens OpenAI content parts;
# serve joins a request's parts with the same separator, so a served prompt is the one trained on.
PART_SEPARATOR = "\n"


def detect_record_format(obj: Mapping) -> str | None:
    """Name the record shape of a parsed row from the keys it holds.

    Args:
        obj: a parsed row.

    Returns:
        One of `RECORD_FORMATS`, or None when no shape's marker key is present.

    Example:
        >>> detect_record_format({"conversations": [], "id": 3})
        'sharegpt'
    """
    for fmt, marker in _MARKER.items():
        if marker in obj:
            return fmt
    return None


def to_canonical(obj: Mapping, record_format: str = "auto") -> dict:
    """Turn one parsed row of any accepted shape into a canonical record.

    Args:
        obj: a parsed row (a JSON object, a CSV row as a dict, ...).
        record_format: "auto" to detect the shape, or one of `RECORD_FORMATS` to require it.

    Returns:
        ``{"messages": [{"role", "content"}, ...], "metadata": {...}}`` or
        ``{"text": str, "metadata": {...}}``. Roles are mapped to system/user/assistant; contents
        are strings. The record is not validated further (see `schema.validate_record`).

    Raises:
        RecordError: the row's shape or fields are wrong (reason unknown_format, bad_field or bad_role).
        UserError: `record_format` is not "auto" or a known shape.

    Example:
        >>> to_canonical({"instruction": "2+2?", "output": "4", "id": 7})
        {'messages': [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}], 'metadata': {'id': 7}}
    """
    fmt = _resolve_format(obj, record_format)
    rec = _CONVERTERS[fmt](obj)
    rec["metadata"] = _metadata(obj, _OWN_KEYS[fmt])
    return rec


def _resolve_format(obj: Mapping, record_format: str) -> str:
    if record_format == "auto":
        fmt = detect_record_format(obj)
        if fmt is None:
            raise RecordError("unknown_format", f"no known record shape in keys {_keys(obj)}; accepted: {_ACCEPTED}")
        return fmt
    if record_format not in _MARKER:
        raise UserError(f"unknown record format '{record_format}'",
                        hint=f"use 'auto' or one of: {', '.join(RECORD_FORMATS)}")
    if _MARKER[record_format] not in obj:
        raise RecordError("unknown_format", f"record_format is '{record_format}' but the row has no "
                                            f"'{_MARKER[record_format]}' key (keys: {_keys(obj)})")
    return record_format


def _keys(obj: Mapping) -> str:
    return "[" + ", ".join(sorted(map(str, obj))) + "]"


def _metadata(obj: Mapping, own: frozenset[str]) -> dict:
    meta = {k: v for k, v in obj.items() if k not in own}
    extra = obj.get("metadata")
    if isinstance(extra, dict):
        meta.update(extra)
    elif extra is not None:
        meta["metadata"] = extra
    return meta


def _from_messages(obj: Mapping) -> dict:
    return {"messages": _turns(obj["messages"], "messages")}


def _from_conversation(obj: Mapping) -> dict:
    return {"messages": _turns(obj["conversation"], "conversation")}


def _from_sharegpt(obj: Mapping) -> dict:
    return {"messages": _system(obj) + _turns(obj["conversations"], "conversations")}


def _from_alpaca(obj: Mapping) -> dict:
    instruction = _string(obj, "instruction")
    output = _string(obj, "output")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError("bad_field", f"'input' must be a string, got {type(extra).__name__}")
    if extra and extra.strip():
        instruction = f"{instruction}\n\n{extra}" if instruction.strip() else extra
    return {"messages": [*_system(obj), *_history(obj.get("history")),
                         {"role": "user", "content": instruction},
                         {"role": "assistant", "content": output}]}


def _from_text(obj: Mapping) -> dict:
    return {"text": _string(obj, "text")}


_CONVERTERS: dict[str, Callable[[Mapping], dict]] = {
    "messages": _from_messages, "conversation": _from_conversation, "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca, "text": _from_text,
}


def _string(obj: Mapping, key: str) -> str:
    if key not in obj:
        raise RecordError("bad_field", f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError("bad_field", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _system(obj: Mapping) -> list[dict]:
    system = obj.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise RecordError("bad_field", f"'system' must be a string, got {type(system).__name__}")
    return [{"role": "system", "content": system}]


def _history(history: Any) -> list[dict]:
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordError("bad_field", f"'history' must be a list of [question, answer] pairs, "
                                       f"got {type(history).__name__}")
    turns = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise RecordError("bad_field", f"history[{i}] must be a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _turns(turns: Any, key: str) -> list[dict]:
    if not isinstance(turns, list):
        raise RecordError("bad_field", f"'{key}' must be a list, got {type(turns).__name__}")
    return [_turn(turn, f"{key}[{i}]") for i, turn in enumerate(turns)]


def _turn(turn: Any, where: str) -> dict:
    if not isinstance(turn, dict):
        raise RecordError("bad_field", f"{where} must be an object, got {type(turn).__name__}")
    # ShareGPT writes {from, value}, OpenAI {role, content}; mixed-up files use either, so accept both.
    role = turn["role"] if "role" in turn else turn.get("from")
    mapped = _ROLE_MAP.get(role) if isinstance(role, str) else None
    if mapped is None:
        mapped = _ROLE_MAP.get(role.strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            raise RecordError("bad_role", f"{where} has role {role!r}; allowed: system, user, assistant "
                                          "(or human, gpt, model, bot, chatgpt)")
    content = turn["content"] if "content" in turn else turn.get("value")
    return {"role": mapped, "content": _content(content, where)}


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError("bad_field", f"{where} content must be a string or a list of text parts, "
                                       f"got {type(content).__name__}")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RecordError("bad_field", f"{where} has a non-text content part ({kind!r}); only text is supported")
    return PART_SEPARATOR.join(texts)
