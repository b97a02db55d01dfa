"""The token codec: prompt ids, stop ids and the pad id, as training, eval and serving use them.

Training encodes a conversation with `ChatTemplate.encode`: the rendered text tokenized without
tokenizer-added special tokens (the templates write BOS themselves). A prompt for generation is
the same rendering with the generation prompt appended, tokenized the same way, so its ids are
a prefix of the ids the model was trained on. A generation stops on the template's end-of-turn
tokens plus EOS.

    >>> ids = prompt_ids(get_template("chatml"), tok, [{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    >>> stop_ids(get_template("chatml"), tok), pad_id(tok)                                  # doctest: +SKIP
    ((2,), 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domaintune.models.templates import ChatTemplate


def prompt_ids(template: ChatTemplate, tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a prompt, exactly as training tokenizes the same text.

    Args:
        template: the model's chat template (the one used in training).
        tokenizer: the model's fast tokenizer.
        messages: the conversation so far (ending before the turn to generate).

    Returns:
        The ids of `template.render(messages, add_generation_prompt=True)`, tokenized without
        tokenizer-added special tokens, as `ChatTemplate.encode` does.
    """
    text = template.render(messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_ids(template: ChatTemplate, tokenizer: Any) -> tuple[int, ...]:
    """The ids a generation stops on: the template's end-of-turn tokens and EOS.

    Stop strings that are not single tokens of this tokenizer are skipped (ChatML lists
    "<|endoftext|>", which not every ChatML tokenizer has); text is still cut at them.
    """
    ids = [single_token_id(tokenizer, s) for s in template.stop]
    ids.append(getattr(tokenizer, "eos_token_id", None))
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int)))


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when it is exactly one token of `tokenizer`, else None."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != text:
        return None  # unknown: an unk id (or None) that does not map back to the string
    return token_id


def pad_id(tokenizer: Any) -> int:
    """The padding id: the pad token, else EOS, else 0 (left padding is masked out, so any id will do)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
    return pad if pad is not None else 0


def guard_tokens(template: ChatTemplate, tokenizer: Any) -> tuple[str, ...]:
    """The strings no message content may carry as written, for `prepare` and `serve` alike.

    Each would tokenize into a real control id and forge structure: the template's markers, every
    token the tokenizer added to its vocabulary (special or not: pad, tool and role tokens such as
    `<｜Assistant｜>` inside a ChatML model), and the control tokens of the common chat formats
    (`data.injection.KNOWN_CONTROL_TOKENS`). Longest first; one-character tokens are left out.
    """
    from domaintune.data.injection import KNOWN_CONTROL_TOKENS

    names = [*template.control_tokens, *KNOWN_CONTROL_TOKENS]
    if tokenizer is not None:
        names += list(getattr(tokenizer, "all_special_tokens", []) or [])
        names += [t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()]
    return tuple(sorted({n for n in names if isinstance(n, str) and len(n) > 1}, key=lambda n: (-len(n), n)))
