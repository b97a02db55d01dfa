"""Tests for serve/chat.py: the terminal chat streams exactly the greedy reply and keeps history."""

from __future__ import annotations

import pytest

from domaintune.models.decode import SamplingParams, generate
from domaintune.serve.chat import HELP, chat_loop

PARAMS = SamplingParams(max_new_tokens=8)


class Terminal:
    """Scripted input lines; records everything printed."""

    def __init__(self, *lines: str) -> None:
        self.lines, self.printed = list(lines), []

    def input(self, prompt: str) -> str:
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)

    def print(self, text: str) -> None:
        self.printed.append(text)

    def replies(self) -> list[str]:
        text = "".join(self.printed)
        return [part.split("\n", 1)[0] for part in text.split("bot> ")[1:]]


@pytest.fixture(scope="module")
def parts(served):
    with served.activate("tuned") as model:
        yield model, served.tokenizer, served.template, served.codec


def greedy(parts, messages):
    model, _, _, codec = parts
    params = SamplingParams(PARAMS.max_new_tokens, stop_ids=codec.stop_ids)
    ids = generate(model, [codec.chat_prompt(messages)], params, codec.pad_id)[0].token_ids
    stream = codec.stream()
    return "".join(stream.push(t) for t in ids) + stream.flush()


def run(parts, terminal, **kwargs):
    model, tokenizer, template, _ = parts
    return chat_loop(model, tokenizer, template, input_fn=terminal.input, print_fn=terminal.print,
                     params=PARAMS, **kwargs)


def test_replies_stream_the_greedy_generation_and_history_grows(parts):
    terminal = Terminal("Hello there", "", "How are you?", "/exit", "never read")
    history = run(parts, terminal)
    first = greedy(parts, [{"role": "user", "content": "Hello there"}])
    second = greedy(parts, [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                            {"role": "user", "content": "How are you?"}])
    assert [m["content"] for m in history] == ["Hello there", first, "How are you?", second]
    assert terminal.printed[0] == HELP and terminal.lines == ["never read"]
    assert len(terminal.printed) > 6  # streamed piece by piece, not printed in one go


def test_reset_keeps_the_system_message_and_eof_quits(parts):
    terminal = Terminal("Hello there", "/reset", "Hi")
    history = run(parts, terminal, system="Be brief.")
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[0]["content"] == "Be brief." and history[1]["content"] == "Hi"
    assert "(conversation cleared)\n" in terminal.printed


def test_old_turns_are_dropped_to_fit_the_context(parts):
    model, tokenizer, template, codec = parts
    turns = ["Hello there, how are you today?"] * 4
    history = run(parts, Terminal(*turns), max_context=60)
    assert len(codec.chat_prompt(history[:-1])) <= 60 - PARAMS.max_new_tokens
    assert len(history) < 2 * len(turns) and history[-2]["content"] == turns[-1]


def test_a_message_longer_than_the_context_is_refused(parts):
    terminal = Terminal("word " * 100, "Hi")
    history = run(parts, terminal, max_context=40)
    assert [m["content"] for m in history][0] == "Hi"
    assert any("too long" in p for p in terminal.printed)


def test_a_knowledge_base_goes_into_each_prompt_as_the_server_builds_it(parts):
    from domaintune.data.kb import KnowledgeBase, entries_from_records
    from domaintune.serve.knowledge import Knowledge

    _, tokenizer, _, _ = parts
    pairs = [{"messages": [{"role": "user", "content": f"case {w} pain"}, {"role": "assistant", "content": w}]}
             for w in ("chest", "knee", "head")]
    knowledge = Knowledge(KnowledgeBase.build(entries_from_records(pairs)), 2, 64)
    terminal = Terminal("chest pain again")
    history = run(parts, terminal, knowledge=knowledge)
    shown, ids = knowledge.apply(history[:1], tokenizer)
    assert f"(knowledge base entries {', '.join(map(str, ids))})" in "".join(terminal.printed)
    assert terminal.replies() == [greedy(parts, shown)]
    assert history[0]["content"] == "chest pain again"  # the history keeps the user's own words
