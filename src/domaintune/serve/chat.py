"""`domaintune chat`: an interactive terminal chat with streaming output.

The reply is generated with the same decoder, template and detokenizer as the server, so what
the terminal shows is what a client of `domaintune serve` would get. Commands: `/reset` clears
the conversation, `/exit` (or Ctrl-D) quits, Ctrl-C stops the reply being written. When the
conversation outgrows the context, the oldest turns are dropped (the system message stays).

    chat_loop(model, tokenizer, get_template("auto", tokenizer))
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from domaintune.models.codec import guard_tokens
from domaintune.models.decode import SamplingParams, decode_stream
from domaintune.models.templates import ChatTemplate
from domaintune.serve.adapters import context_length
from domaintune.serve.codec import Codec

PROMPT = "you> "
HELP = "Chat with the model. /reset clears the conversation, /exit quits, Ctrl-C stops a reply.\n"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def chat_loop(model: Any, tokenizer: Any, template: ChatTemplate, *, input_fn: Callable[[str], str] = input,
              print_fn: Callable[[str], None] = _write, params: SamplingParams | None = None,
              system: str | None = None, max_context: int | None = None,
              knowledge: Any = None) -> list[dict[str, str]]:
    """Read user turns, stream the model's replies, until /exit or end of input.

    Args:
        model: the model to chat with (with its adapter active), in eval mode.
        tokenizer: its tokenizer.
        template: the chat template it was trained with.
        input_fn: reads one line, given the prompt string (raises EOFError at the end).
        print_fn: writes text as is (no newline added); called once per streamed piece.
        params: sampling settings (default: greedy, 256 new tokens); the template's stop ids are
            always added.
        system: an optional system message opening the conversation.
        max_context: prompt plus reply token limit (default: the model's context).
        knowledge: the `serve.knowledge.Knowledge` the model was trained with: each turn's prompt
            shows its entries, as the server's does (their ids are printed).

    Returns:
        The conversation at exit, as {"role", "content"} messages.

    Example:
        >>> lines = iter(["Hello", "/exit"])
        >>> history = chat_loop(model, tok, tpl, input_fn=lambda _: next(lines),   # doctest: +SKIP
        ...                     print_fn=lambda _: None)
        >>> [m["role"] for m in history]                                          # doctest: +SKIP
        ['user', 'assistant']
    """
    codec = Codec(tokenizer, template)
    params = params or SamplingParams(max_new_tokens=256)
    params = replace(params, stop_ids=tuple(dict.fromkeys((*params.stop_ids, *codec.stop_ids))))
    context = max_context or context_length(model)
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    guard = guard_tokens(template, tokenizer)  # the entries serve and training may show
    print_fn(HELP)
    while (text := _read(input_fn, print_fn)) is not None:
        if text == "/reset":
            history = list(opening)
            print_fn("(conversation cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        shown: dict[str, list[int]] = {}

        def with_knowledge(messages: list[dict[str, str]]) -> list[dict[str, str]]:
            if knowledge is None:
                return messages
            out, shown["ids"] = knowledge.apply(messages, tokenizer, guard)
            return out

        prompt = _fit(codec, history, context - params.max_new_tokens, len(opening), with_knowledge)
        if shown.get("ids"):
            print_fn(f"(knowledge base entries {', '.join(map(str, shown['ids']))})\n")
        if prompt is None:
            history.pop()
            print_fn("(that message is too long for this model's context)\n")
            continue
        history.append({"role": "assistant", "content": _reply(model, codec, prompt, params, print_fn)})
    return history


def _read(input_fn: Callable[[str], str], print_fn: Callable[[str], None]) -> str | None:
    """The next non-empty line, or None to quit."""
    while True:
        try:
            text = input_fn(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            print_fn("\n")
            return None
        if text in ("/exit", "/quit"):
            return None
        if text:
            return text


def _fit(codec: Codec, history: list[dict[str, str]], budget: int, keep: int,
         show: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> list[int] | None:
    """Prompt ids for `show(history)`, dropping the oldest turns (after the first `keep`) to fit `budget`."""
    while True:
        prompt = codec.chat_prompt(show(history))
        if len(prompt) <= budget:
            return prompt
        if len(history) - keep <= 1:
            return None
        del history[keep:keep + 2]  # the oldest user turn and its reply


def _reply(model: Any, codec: Codec, prompt: list[int], params: SamplingParams,
           print_fn: Callable[[str], None]) -> str:
    stream = codec.stream()
    print_fn("bot> ")
    try:
        for step in decode_stream(model, [prompt], params, codec.pad_id):
            for _row, token in step:
                print_fn(stream.push(token))
        print_fn(stream.flush())
    except KeyboardInterrupt:  # stop this reply, keep the chat going
        print_fn(" [stopped]")
    print_fn("\n")
    return stream.text
