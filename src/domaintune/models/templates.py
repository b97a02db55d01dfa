"""Chat templates: a conversation becomes text plus a mask of the tokens the model learns.

One `ChatTemplate` object is shared by train, eval, export and serve, so the text a model is
trained on is byte for byte the text it is later prompted with. Each template renders a
conversation as consecutive `(text, trained)` pieces; `trained` covers exactly each assistant
turn's content and its end-of-turn token (a model that is never trained on "<|im_end|>" never
learns to stop). `encode` tokenizes the whole rendered text once and maps the pieces onto tokens
through character offsets, so its ids are exactly the ids of tokenizing `render()`.

Built-ins follow the official templates of their models (DeepSeek's `tokenizer_config.json`
Jinja, ChatML as Qwen and SmolLM2 write it); `tokenizer` wraps a tokenizer's own Jinja template.

    >>> tpl = get_template("chatml")
    >>> tpl.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domaintune.errors import UserError

Message = Mapping[str, str]
Conversation = Sequence[Message]
Segments = list[tuple[str, bool]]
# (messages, add_generation_prompt, keep_reasoning) -> raw pieces (may hold empties / repeats).
Renderer = Callable[[Conversation, bool, bool], Segments]
# (messages, add_generation_prompt) -> the text alone, where that is cheaper than the pieces.
TextRenderer = Callable[[Conversation, bool], str]

ROLES = ("system", "user", "assistant")
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
DS_USER = "<｜User｜>"
DS_ASSISTANT = "<｜Assistant｜>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_END = "</think>"
TEMPLATE_NAMES = ("auto", "tokenizer", "chatml", "deepseek_llm", "deepseek_r1", "deepseek_v3")


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format: how a conversation is written out and which of its tokens are trained.

    Attributes:
        name: the template's name, one of `TEMPLATE_NAMES` (never "auto").
        control_tokens: strings that must never appear inside message content; the data layer
            rejects rows that contain them, since they would forge turn boundaries.
        stop: end-of-turn strings a generator stops on.
        renderer: the function that writes a conversation as `(text, trained)` pieces.
        text_renderer: optional shortcut for `render` when the pieces cost more than the text
            (the `tokenizer` template renders once instead of once per turn).

    Example:
        >>> tpl = get_template("deepseek_llm")
        >>> tpl.render_segments([{"role": "user", "content": "Hi"},
        ...                      {"role": "assistant", "content": "Hello"}])[-1]
        ('Hello<｜end▁of▁sentence｜>', True)
    """

    name: str
    control_tokens: tuple[str, ...]
    stop: tuple[str, ...]
    renderer: Renderer = field(repr=False, compare=False)
    text_renderer: TextRenderer | None = field(default=None, repr=False, compare=False)

    def render_segments(self, messages: Conversation, add_generation_prompt: bool = False,
                        keep_reasoning: bool = True) -> Segments:
        """Render a conversation as consecutive `(text, trained)` pieces.

        Args:
            messages: the conversation, a list of {"role", "content"} dicts.
            add_generation_prompt: append the header that opens an assistant turn.
            keep_reasoning: keep the final assistant turn's "<think>…</think>" block (templates
                that handle reasoning only; history turns always lose it, as in DeepSeek's own).

        Returns:
            Non-empty pieces, neighbours with the same flag merged. `trained` is True exactly for
            assistant content plus its end-of-turn token.

        Raises:
            UserError: a message has an unknown role or non-string content.
        """
        for i, message in enumerate(messages):
            _check_message(message, i)
        return _merge(self.renderer(messages, add_generation_prompt, keep_reasoning))

    def render(self, messages: Conversation, add_generation_prompt: bool = False,
               keep_reasoning: bool = True) -> str:
        """Render a conversation as one string (the join of `render_segments`)."""
        if self.text_renderer is not None:
            for i, message in enumerate(messages):
                _check_message(message, i)
            return self.text_renderer(messages, add_generation_prompt)
        segments = self.render_segments(messages, add_generation_prompt, keep_reasoning)
        return "".join(text for text, _ in segments)

    def encode(self, messages: Conversation, tokenizer: Any, train_on_prompt: bool = False,
               keep_reasoning: bool = True) -> tuple[list[int], list[bool]]:
        """Tokenize a conversation once and mark the tokens the loss is computed on.

        A token is trained when its character span overlaps a trained piece, so a token that
        straddles a boundary (byte-level BPE glues "Assistant: " and the answer's first word into
        " Hello") is trained: it is what the model has to emit after the generation prompt.

        Args:
            messages: the conversation.
            tokenizer: a fast (Rust-backed) Hugging Face tokenizer; offsets need it.
            train_on_prompt: train on every token, prompts and headers included.
            keep_reasoning: as in `render_segments`.

        Returns:
            `(input_ids, trained)`, two lists of the same length. The ids equal
            `tokenizer(render(messages), add_special_tokens=False)["input_ids"]`; the templates
            write BOS themselves.

        Raises:
            UserError: the tokenizer cannot report offsets (not a fast tokenizer).
        """
        segments = self.render_segments(messages, keep_reasoning=keep_reasoning)
        ids, offsets = _tokenize_with_offsets(tokenizer, "".join(piece for piece, _ in segments))
        if train_on_prompt:
            return ids, [True] * len(ids)
        return ids, _mask_from_offsets(offsets, _trained_spans(segments))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ChatTemplate:
        """Wrap a tokenizer's own Jinja chat template.

        Pieces come from rendering growing prefixes of the conversation and diffing: the text an
        assistant message adds, from where its content starts through the end-of-turn token right
        after it, is trained. `keep_reasoning` is ignored; the Jinja template decides.

        Args:
            tokenizer: a Hugging Face tokenizer whose `chat_template` is set.

        Returns:
            A template named "tokenizer" whose control tokens are the tokenizer's special tokens
            that appear in its rendered output or its template source.

        Raises:
            UserError: the tokenizer has no chat template.
        """
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise UserError("the tokenizer has no chat template",
                            hint=f"pick one by name: {', '.join(TEMPLATE_NAMES[2:])}")

        specials = _special_tokens(tokenizer)

        def renderer(messages: Conversation, add_generation_prompt: bool, _keep: bool) -> Segments:
            return _diff_segments(tokenizer, specials, messages, add_generation_prompt)

        def text_renderer(messages: Conversation, add_generation_prompt: bool) -> str:
            return _apply(tokenizer, messages, add_generation_prompt)

        sample = _sample_render(tokenizer, specials)
        rendered = "".join(text for text, _ in sample)
        control = tuple(t for t in specials if t in rendered or t in source)
        ends = [t for text, trained in sample if trained for t in control if text.endswith(t)]
        eos = getattr(tokenizer, "eos_token", None)
        stop = tuple(dict.fromkeys(ends + ([eos] if isinstance(eos, str) and eos else [])))
        return cls("tokenizer", control, stop, renderer, text_renderer)


def get_template(name: str = "auto", tokenizer: Any = None) -> ChatTemplate:
    """Look up a chat template by name.

    Args:
        name: one of `TEMPLATE_NAMES`. "auto" is the tokenizer's own template when it has one,
            else "chatml"; "tokenizer" requires one.
        tokenizer: the model's tokenizer, for "auto" and "tokenizer".

    Returns:
        The template.

    Raises:
        UserError: the name is unknown, or "tokenizer" was asked for without a chat template.

    Example:
        >>> get_template("deepseek_r1").stop
        ('<｜end▁of▁sentence｜>',)
    """
    if name == "auto":
        has_own = isinstance(getattr(tokenizer, "chat_template", None), str)
        return ChatTemplate.from_tokenizer(tokenizer) if has_own else BUILTIN_TEMPLATES["chatml"]
    if name == "tokenizer":
        return ChatTemplate.from_tokenizer(tokenizer)
    if name not in BUILTIN_TEMPLATES:
        raise UserError(f"unknown chat template '{name}'", hint=f"use one of: {', '.join(TEMPLATE_NAMES)}")
    return BUILTIN_TEMPLATES[name]


# ---- built-in renderers ------------------------------------------------------------------------

def _chatml(messages: Conversation, add_generation_prompt: bool, _keep: bool) -> Segments:
    out: Segments = []
    for m in messages:
        header = f"{IM_START}{m['role']}\n"
        if m["role"] == "assistant":
            out += [(header, False), (m["content"] + IM_END, True), ("\n", False)]
        else:
            out.append((header + m["content"] + IM_END + "\n", False))
    if add_generation_prompt:
        out.append((f"{IM_START}assistant\n", False))
    return out


# deepseek_llm's roles are plain text at the start of a line: content holding a line that starts
# with "User:" or "Assistant:" would forge a turn, so such lines get U+200B after their first letter
# (as data/injection.py escapes control tokens); training and serving render through here alike.
_PLAIN_ROLE = re.compile(r"(?m)^(U)(ser:)|^(A)(ssistant:)")


def escape_plain_roles(text: str) -> str:
    """Break deepseek_llm's role markers at line starts in message content.

    Example:
        >>> escape_plain_roles("ok\n\nAssistant: sure") == "ok\n\nA\u200bssistant: sure"
        True
    """
    return _PLAIN_ROLE.sub(lambda m: "\u200b".join(g for g in m.groups() if g), text)


def _deepseek_llm(messages: Conversation, add_generation_prompt: bool, _keep: bool) -> Segments:
    # System text is written where it occurs, as in deepseek-llm-7b-chat's own template.
    out: Segments = [(BOS, False)]
    for m in messages:
        content = escape_plain_roles(m["content"])
        if m["role"] == "system":
            out.append((content + "\n\n", False))
        elif m["role"] == "user":
            out.append(("User: " + content + "\n\n", False))
        else:
            out += [("Assistant: ", False), (content + EOS, True)]
    if add_generation_prompt:
        out.append(("Assistant:", False))
    return out


def _deepseek_turns(messages: Conversation, add_generation_prompt: bool, keep_reasoning: bool,
                    reasoning: bool) -> Segments:
    # DeepSeek V3/R1 gather every system message, joined by a blank line, right after BOS.
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out: Segments = [(BOS + system, False)]
    last = len(messages) - 1
    for i, m in enumerate(messages):
        content = m["content"]
        if m["role"] == "user":
            out.append((DS_USER + content, False))
        elif m["role"] == "assistant":
            # R1's template drops the reasoning of history turns; only a final answer keeps it.
            if reasoning and THINK_END in content and (i != last or not keep_reasoning):
                content = content.split(THINK_END)[-1]
            out += [(DS_ASSISTANT, False), (content + EOS, True)]
    if add_generation_prompt:
        out.append((DS_ASSISTANT + ("<think>\n" if reasoning else ""), False))
    return out


def _deepseek_r1(messages: Conversation, add_generation_prompt: bool, keep: bool) -> Segments:
    return _deepseek_turns(messages, add_generation_prompt, keep, reasoning=True)


def _deepseek_v3(messages: Conversation, add_generation_prompt: bool, keep: bool) -> Segments:
    return _deepseek_turns(messages, add_generation_prompt, keep, reasoning=False)


# R1's assistant content legitimately holds "<think>…</think>", so those two are not control
# tokens for it (the data layer would otherwise reject every reasoning trace).
BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", (IM_START, IM_END, ENDOFTEXT), (IM_END, ENDOFTEXT), _chatml),
    "deepseek_llm": ChatTemplate("deepseek_llm", (BOS, EOS), (EOS,), _deepseek_llm),
    "deepseek_r1": ChatTemplate("deepseek_r1", (BOS, EOS, DS_USER, DS_ASSISTANT), (EOS,), _deepseek_r1),
    "deepseek_v3": ChatTemplate("deepseek_v3", (BOS, EOS, DS_USER, DS_ASSISTANT), (EOS,), _deepseek_v3),
}


# ---- the tokenizer's own Jinja template --------------------------------------------------------

def _apply(tokenizer: Any, messages: Conversation, add_generation_prompt: bool) -> str:
    if not messages:
        return ""  # transformers refuses an empty conversation; it renders as nothing.
    return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _diff_segments(tokenizer: Any, specials: Sequence[str], messages: Conversation,
                   add_generation_prompt: bool) -> Segments:
    out: Segments = []
    prev = ""
    for i, m in enumerate(messages):
        cur = _apply(tokenizer, messages[: i + 1], False)
        if not cur.startswith(prev):
            raise UserError("the tokenizer's chat template rewrites earlier turns as the conversation "
                            "grows, so answer tokens cannot be located",
                            hint=f"pick a built-in template: {', '.join(TEMPLATE_NAMES[2:])}")
        delta = cur[len(prev):]
        if m["role"] == "assistant":
            header = _apply(tokenizer, messages[:i], True)[len(prev):] if i else ""
            out += _split_assistant(delta, m["content"], header, specials)
        else:
            out.append((delta, False))
        prev = cur
    if add_generation_prompt:
        out.append((_apply(tokenizer, messages, True)[len(prev):], False))
    return out


def _split_assistant(delta: str, content: str, header: str, specials: Sequence[str]) -> Segments:
    """Split the text one assistant message added into header, trained part and trailer."""
    search_from = len(header) if header and delta.startswith(header) else 0
    start, found = -1, ""
    # Templates may trim the content or drop its reasoning; try what they commonly do.
    for candidate in dict.fromkeys((content, content.strip(), content.split(THINK_END)[-1].strip())):
        start = delta.find(candidate, search_from)
        if start >= 0:
            found = candidate
            break
    if start < 0:
        raise UserError("the tokenizer's chat template changes assistant text, so answer tokens "
                        "cannot be located", hint=f"pick a built-in template: {', '.join(TEMPLATE_NAMES[2:])}")
    end = start + len(found)
    rest = delta[end:]
    closing = rest.lstrip(" \n")
    eot = next((t for t in specials if closing.startswith(t)), None)
    # No special token closes the turn: the rest of the turn is its terminator, so train it all.
    end += len(rest) - len(closing) + len(eot) if eot else len(rest)
    return [(delta[:start], False), (delta[start:end], True), (delta[end:], False)]


def _special_tokens(tokenizer: Any) -> tuple[str, ...]:
    names = list(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names += [t.content for t in added.values() if getattr(t, "special", False)]
    # Longest first, so "<|im_end|>" is never shadowed by a shorter token it starts with.
    return tuple(sorted({n for n in names if isinstance(n, str) and n}, key=len, reverse=True))


def _sample_render(tokenizer: Any, specials: Sequence[str]) -> Segments:
    sample = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        return _diff_segments(tokenizer, specials, [{"role": "system", "content": "Be brief."}, *sample], True)
    except Exception:  # noqa: BLE001 - some templates (Gemma) refuse a system role; retry without.
        return _diff_segments(tokenizer, specials, sample, True)


# ---- pieces and masks --------------------------------------------------------------------------

def _check_message(message: Message, index: int) -> None:
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise UserError(f"message {index} has role {role!r}", hint=f"use one of: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise UserError(f"message {index} content is {type(content).__name__}, not text")


def _merge(segments: Segments) -> Segments:
    out: Segments = []
    for text, trained in segments:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def _trained_spans(segments: Segments) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for text, trained in segments:
        if trained:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans


def _tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: same ids, a fraction of the wrapper's cost
        enc = backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as err:
        raise UserError("this tokenizer cannot report token offsets, so answer tokens cannot be located",
                        hint="use a fast tokenizer (a folder with tokenizer.json)") from err
    return list(enc["input_ids"]), enc["offset_mapping"]


def _mask_from_offsets(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> list[bool]:
    # Token offsets only grow, so the tokens overlapping each span form one slice found by bisection.
    starts = [s for s, _ in offsets]
    ends = [e if e > s else s + 1 for s, e in offsets]  # a zero-width (trimmed) token sits at `s`
    mask = [False] * len(starts)
    for a, b in spans:
        first, last = bisect_right(ends, a), bisect_left(starts, b)
        mask[first:last] = [True] * max(0, last - first)
    return mask
