"""The canonical record's rules: reject reason codes, validation, and small record helpers.

A canonical record is either a chat record, ``{"messages": [{"role", "content"}, ...], "metadata": {}}``,
or a text record for continued pre-training, ``{"text": str, "metadata": {}}`` (see `formats.py`,
which builds them). Every row `prepare` drops carries one code from `REJECT_REASONS`, so the rejects
file and the report speak the same small vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable

REJECT_REASONS: dict[str, str] = {
    "invalid_utf8": "the row's bytes are not valid UTF-8",
    "invalid_json": "the row is not valid JSON",
    "not_an_object": "the row is valid JSON but not an object ({...})",
    "invalid_csv": "the row cannot be parsed as CSV/TSV",
    "wrong_column_count": "a CSV/TSV row has more cells than the header",
    "unknown_format": "no known record shape (messages, conversation, sharegpt, alpaca, text) matches",
    "bad_field": "a field has the wrong type or is missing",
    "bad_role": "a message role is not system, user or assistant",
    "no_assistant": "the conversation has no assistant message to learn from",
    "empty_assistant": "an assistant message is empty",
    "empty_user": "a user message is empty",
    "alternation": "messages must be [system], user, assistant, user, assistant, ... ending with assistant",
    "empty_text": "a text record has no text",
    "too_long": "the record is longer than the token limit",
    "role_injection": "content holds chat control tokens that could fake a role",
    "mix_downsampled": "left out of train by down-sampling its source to the mix ratios",
}

CHAT_ROLES = ("system", "user", "assistant")
_ROLES = frozenset(CHAT_ROLES)


def validate_record(rec: dict) -> tuple[str, str] | None:
    """Check a canonical record against the training rules.

    Chat records need known roles, string contents, an optional system message first, then user and
    assistant alternating from user to a final assistant, and no empty user or assistant message.
    Text records need non-blank text. Never raises, whatever the input.

    Args:
        rec: a canonical record (as built by `formats.to_canonical`, or anything else).

    Returns:
        None when the record is valid, else ``(reason, detail)`` with reason a key of `REJECT_REASONS`.

    Example:
        >>> validate_record({"messages": [{"role": "user", "content": "hi"}], "metadata": {}})
        ('no_assistant', 'the conversation has no assistant message')
    """
    if not isinstance(rec, dict):
        return "not_an_object", f"record is a {type(rec).__name__}, not an object"
    if "messages" in rec:
        return _validate_chat(rec["messages"])
    if "text" in rec:
        text = rec["text"]
        if not isinstance(text, str):
            return "bad_field", f"'text' must be a string, got {type(text).__name__}"
        return None if text.strip() else ("empty_text", "'text' is empty")
    return "unknown_format", f"record has neither 'messages' nor 'text' (keys: {sorted(map(str, rec))})"


def _validate_chat(messages: Any) -> tuple[str, str] | None:
    if not isinstance(messages, list):
        return "bad_field", f"'messages' must be a list, got {type(messages).__name__}"
    if not messages:
        return "bad_field", "'messages' is empty"
    problem = _check_types(messages)
    if problem is None:
        problem = _check_order(messages)
    if problem is None:
        problem = _check_empty(messages)
    return problem


def _check_types(messages: list) -> tuple[str, str] | None:
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return "bad_field", f"message {i} must be an object, got {type(msg).__name__}"
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            return "bad_role", f"message {i} has role {role!r}; allowed: {', '.join(CHAT_ROLES)}"
        if not isinstance(msg.get("content"), str):
            return "bad_field", f"message {i} content must be a string, got {type(msg.get('content')).__name__}"
    return None


def _check_order(messages: list) -> tuple[str, str] | None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "no_assistant", "the conversation has no assistant message"
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            where = "system is only allowed as message 0" if roles[i] == "system" else "user and assistant alternate"
            return "alternation", f"message {i}: expected {expected}, got {roles[i]} ({where})"
    if roles[-1] != "assistant":
        return "alternation", f"message {len(roles) - 1}: the conversation must end with an assistant message"
    return None


def _check_empty(messages: list) -> tuple[str, str] | None:
    for i, msg in enumerate(messages):
        if msg["role"] != "system" and not msg["content"].strip():
            return f"empty_{msg['role']}", f"message {i} ({msg['role']}) is empty"
    return None


def keep_last_turns(rec: dict, k: int) -> dict:
    """Keep the system message (if first) and the last `k` user/assistant exchanges.

    An exchange starts at a user message and runs to the next one, so its assistant reply stays with
    it. Text records, and records with `k` <= 0, come back unchanged.

    Args:
        rec: a canonical chat or text record.
        k: how many exchanges to keep; 0 or less keeps all.

    Returns:
        A new record (the original is not modified); `metadata` is shared, not copied.

    Example:
        >>> rec = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        ...                     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
        >>> [m["content"] for m in keep_last_turns(rec, 1)["messages"]]
        ['c', 'd']
    """
    messages = rec.get("messages")
    if k <= 0 or not isinstance(messages, list) or not messages:
        return rec
    head = messages[:1] if _role(messages[0]) == "system" else []
    body = messages[len(head):]
    user_at = [i for i, m in enumerate(body) if _role(m) == "user"]
    if len(user_at) <= k:
        return {**rec, "messages": list(messages)}
    return {**rec, "messages": head + body[user_at[-k]:]}


def _role(msg: Any) -> Any:
    return msg.get("role") if isinstance(msg, dict) else None


def record_text(rec: dict) -> str:
    """All of a record's text, one content per line: what dedup hashes and length checks measure.

    Args:
        rec: a canonical chat or text record.

    Returns:
        The message contents joined by "\\n", or the text of a text record.
    """
    if "messages" in rec:
        return "\n".join(m["content"] for m in rec["messages"])
    return rec["text"]


def map_contents(rec: dict, fn: Callable[[str, str], str]) -> dict:
    """Apply `fn(role, content)` to every content of a record (cleaning, PII masking, ...).

    Args:
        rec: a canonical chat or text record.
        fn: called with the role ("text" for a text record) and the content; returns the new content.

    Returns:
        A new record; messages are new dicts, `metadata` is shared, not copied.

    Example:
        >>> map_contents({"text": " a ", "metadata": {}}, lambda role, s: s.strip())
        {'text': 'a', 'metadata': {}}
    """
    if "messages" in rec:
        messages = [{**m, "content": fn(m["role"], m["content"])} for m in rec["messages"]]
        return {**rec, "messages": messages}
    return {**rec, "text": fn("text", rec["text"])}
