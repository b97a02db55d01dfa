"""Token counting with the model's own tokenizer and chat template, in batches.

`prepare` uses this for length limits and percentiles, so a row's count is exactly the number of
tokens training will see: the template's role headers and end-of-turn tokens included.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from domaintune.models.templates import ChatTemplate


def make_token_counter(tokenizer: Any, template: ChatTemplate) -> Callable[[Sequence[dict]], list[int]]:
    """Return a function giving the token length of each canonical record.

    Chat records are rendered with `template` (as in training); raw-text records count their text.
    The fast tokenizer's batch encoder runs in Rust on all cores.

    Example:
        >>> count = make_token_counter(tok, get_template("chatml"))  # doctest: +SKIP
        >>> count([{"messages": [...], "metadata": {}}])              # doctest: +SKIP
        [42]
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode_batch = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)

    def count(records: Sequence[dict]) -> list[int]:
        texts = [template.render(r["messages"]) if "messages" in r else r["text"] for r in records]
        if not texts:
            return []
        if encode_batch is not None:
            return [len(enc.ids) for enc in encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count
