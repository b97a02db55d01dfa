"""Retrieved knowledge in the prompt: the one rendering training, eval, serve and export share.

The entries a knowledge base returns for a conversation (`data.kb`) go into its last user
message, before the user's own text, as a numbered list; a training pair shows its answer after
an arrow:

    Reference entries (they may be wrong):
    [1] Diagnosis: Acute appendicitis with peritonitis -> Diseases of the digestive system
    [2] Diagnosis: Appendicitis, unspecified -> Diseases of the digestive system

    Diagnosis: Acute appendicitis without perforation
    ICD-10-CM chapter?

The block holds at most `max_tokens` tokens of the model's tokenizer (entries are added best
first until the next would not fit; a first entry longer than the budget is cut at a word).
Messages are changed, not the chat template, so every template renders retrieval the same way,
and the loss mask still covers only the answer. `RENDERING` names this format; a run records it
with the knowledge base's hash, so a later change of the format is refused, not silently used.

    records = augment_records(records, kb, tokenizer, k=4, max_tokens=256, leave_one_out=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domaintune.data.answers import prompt_text
from domaintune.data.kb import Hit, KnowledgeBase

RENDERING = "reference-list/1"
HEADER = "Reference entries (they may be wrong):"


def render_context(hits: Sequence[Hit], tokenizer: Any, max_tokens: int,
                   forbidden: Sequence[str] = ()) -> tuple[str, list[Hit]]:
    """The reference block for `hits` within `max_tokens` tokens, and the hits it shows.

    Entries whose text or answer holds one of `forbidden` (the template's control tokens: a
    document could otherwise forge a turn boundary) are left out. The block is "" when nothing fits.
    """
    lines: list[str] = []
    shown: list[Hit] = []
    for hit in hits:
        entry = hit.entry
        if any(t in entry.text or t in (entry.answer or "") for t in forbidden):
            continue
        line = f"[{len(lines) + 1}] {' '.join(entry.text.split())}" + (f" -> {entry.answer}" if entry.answer else "")
        if _count(tokenizer, _block([*lines, line])) <= max_tokens:
            lines.append(line)
            shown.append(hit)
            continue
        if not lines:  # the best entry alone is too long: keep as many of its words as fit
            words = line.split()
            while len(words) > 1 and _count(tokenizer, _block([" ".join(words)])) > max_tokens:
                words = words[: max(1, len(words) * 3 // 4)]
            if _count(tokenizer, _block([" ".join(words)])) <= max_tokens:
                lines.append(" ".join(words))
                shown.append(hit)
        break
    return (_block(lines) if lines else ""), shown


def _block(lines: Sequence[str]) -> str:
    return "\n".join([HEADER, *lines])


def with_context(messages: Sequence[Mapping[str, str]], block: str) -> list[dict[str, str]]:
    """`messages` with `block` put before the content of the last user message."""
    out = [dict(m) for m in messages]
    if not block:
        return out
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last_user is None:
        return out
    out[last_user]["content"] = f"{block}\n\n{out[last_user]['content']}"
    return out


QUESTION_KEY = "question"


def question_text(record: Mapping[str, Any]) -> str:
    """The last user message of a record as the user wrote it (before any retrieved block)."""
    metadata = record.get("metadata") or {}
    if QUESTION_KEY in metadata and "retrieved" in metadata:
        return str(metadata[QUESTION_KEY])
    return query_text(record.get("messages") or [])


def query_text(messages: Sequence[Mapping[str, str]]) -> str:
    """What a conversation is looked up by: its last user message."""
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def augment_records(records: Sequence[Mapping[str, Any]], kb: KnowledgeBase, tokenizer: Any, *, k: int,
                    max_tokens: int, leave_one_out: bool = False, forbidden: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each chat record with its retrieved entries in the prompt, and their ids in `metadata.retrieved`.

    Args:
        records: prepared chat records (a final assistant answer for training and eval).
        kb: the knowledge base.
        tokenizer: counts the block's tokens.
        k, max_tokens: entries looked up, and the block's token budget.
        leave_one_out: leave out entries equal to the record's own prompt (training on pairs
            from the same split: the record itself and its duplicates).
        forbidden: control tokens no shown entry may hold (`render_context`).

    `metadata.retrieved` lists the entries the prompt shows (those that fit the budget), and
    `metadata.question` keeps the user's message as it was before the block (`question_text`), so
    an evaluation with retrieval pairs with one without.
    """
    chats = [r for r in records if "messages" in r]
    queries = [query_text(before_answer(r["messages"])) for r in chats]
    own = [prompt_text(r) for r in chats] if leave_one_out else None
    found = iter(kb.search(queries, k, exclude=own))
    out = []
    for record in records:
        if "messages" not in record:
            out.append(dict(record))
            continue
        block, shown = render_context(next(found), tokenizer, max_tokens, forbidden)
        metadata = {**(record.get("metadata") or {}), "retrieved": [h.entry.id for h in shown],
                    QUESTION_KEY: query_text(record["messages"])}
        out.append({**record, "messages": with_context(record["messages"], block), "metadata": metadata})
    return out


def before_answer(messages: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The messages before the last assistant turn (all of them when there is none)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return list(messages[:last])


def _count(tokenizer: Any, text: str) -> int:
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
