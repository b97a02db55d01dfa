"""Text in and out of the model: prompts rendered as in training, generated ids streamed as text.

`Codec` turns chat messages into prompt ids with the very `ChatTemplate` object training used and
the same tokenization (`ChatTemplate.encode` documents it: the rendered text tokenized with
`add_special_tokens=False`; the templates write BOS themselves), so a served adapter sees the
tokens it was trained on. Its stop ids are the template's end-of-turn tokens plus EOS.

`TextStream` turns one row's generated ids into text pieces as they arrive. It detokenizes
incrementally (the prefix-offset method of text-generation-inference: a piece is released only
once it no longer ends in an incomplete UTF-8 sequence), drops stop tokens, and holds back text
that could be the start of a stop string, so a client never sees half of one.

    >>> codec = Codec(tokenizer, get_template("chatml"))              # doctest: +SKIP
    >>> ids = codec.chat_prompt([{"role": "user", "content": "hi"}])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from domaintune.models.codec import pad_id, single_token_id, stop_ids
from domaintune.models.templates import ChatTemplate

REPLACEMENT = "\ufffd"


class Codec:
    """Prompt encoding and stop tokens for one base model's tokenizer and chat template.

    Args:
        tokenizer: the Hugging Face tokenizer training used.
        template: the chat template training used (`models.templates.get_template`).

    Attributes:
        stop_ids: ids that end a reply: the template's single-token stop strings plus EOS.
        stop_strings: template stop strings that are not one token (matched in the text).
        pad_id: the padding id (pad token, else EOS, else 0).

    Example:
        >>> codec = Codec(tok, get_template("chatml", tok))   # doctest: +SKIP
        >>> codec.stop_ids                                    # doctest: +SKIP
        (2,)
    """

    def __init__(self, tokenizer: Any, template: ChatTemplate) -> None:
        self.tokenizer, self.template = tokenizer, template
        # The token rules of training and eval (models/codec.py), so a served reply stops where
        # an evaluated one does.
        self.stop_ids: tuple[int, ...] = stop_ids(template, tokenizer)
        self.stop_strings: tuple[str, ...] = tuple(t for t in template.stop if single_token_id(tokenizer, t) is None)
        self.pad_id: int = pad_id(tokenizer)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Prompt ids for a conversation, ending with the assistant's generation header.

        Raises:
            UserError: a message has a role the template does not know.
        """
        return self.encode_text(self.template.render(messages, add_generation_prompt=True))

    def encode_text(self, text: str) -> list[int]:
        """Ids of raw text, tokenized as training tokenizes (no special tokens added)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly, as ChatTemplate.encode does
            return list(backend.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, extra_stops: Iterable[str] = ()) -> TextStream:
        """A `TextStream` for one generated row, stopping also on the request's `stop` strings."""
        return TextStream(self.tokenizer, self.stop_ids, (*self.stop_strings, *extra_stops))


class TextStream:
    """One generated row as text, piece by piece.

    Args:
        tokenizer: decodes ids (`decode(ids, skip_special_tokens=True)`).
        stop_ids: ids that end the row; they add no text.
        stop_strings: strings that end the row; the text is cut before the first one.

    Attributes:
        text: all text released so far.
        n_tokens: ids pushed (stop tokens included).
        finish_reason: "stop" once a stop id or stop string was seen, else None.

    Example:
        >>> stream = TextStream(tok, stop_ids=(2,), stop_strings=("\\n\\n",))   # doctest: +SKIP
        >>> [stream.push(i) for i in ids] + [stream.flush()]                   # doctest: +SKIP
        ['Hel', 'lo', '', ' world', '']
    """

    def __init__(self, tokenizer: Any, stop_ids: Iterable[int] = (), stop_strings: Iterable[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(stop_ids)
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.text = ""
        self.n_tokens = 0
        self.finish_reason: str | None = None
        self._ids: list[int] = []
        self._prefix = self._read = 0  # token offsets: decoded context start, end of released ids
        self._pending = ""  # decoded text not yet released (a possible stop-string start)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it releases (often "", never past a stop)."""
        if self.finish_reason is not None:
            return ""
        self.n_tokens += 1
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
            return self._release(self._pending)
        self._ids.append(token_id)
        return self._release(self._pending + self._decode_new())

    def flush(self) -> str:
        """Release what is held back at the end of the row (an incomplete character decodes as �)."""
        if self.finish_reason is not None:
            return ""
        tail = self._pending
        if self._read < len(self._ids):
            tail += self._decode(self._ids[self._prefix:])[len(self._decode(self._ids[self._prefix:self._read])):]
            self._read = len(self._ids)
        self._pending = ""
        return self._emit(tail)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _decode_new(self) -> str:
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""  # an incomplete multi-byte character: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def _release(self, text: str) -> str:
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                text, self.finish_reason = text[:at], "stop"
        if self.finish_reason is not None:
            self._pending = ""
            return self._emit(text)
        hold = _held_back(text, self.stop_strings)
        self._pending = text[len(text) - hold:] if hold else ""
        return self._emit(text[:len(text) - hold])

    def _emit(self, text: str) -> str:
        self.text += text
        return text


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper start of some stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best
