"""What a served adapter brings from its run besides weights: its closed answer set and its knowledge base.

A run that trained on labels records them (`labels.json`); one that trained with retrieval records
its knowledge base (`retrieval.json`). The server loads both with the adapter: requests to it are
looked up in the same knowledge base, rendered into the prompt the same way as in training, and
answered with the ids of the entries used; with `--closed-set auto` they decode inside the run's
answer set. A knowledge base whose hash differs from the one the run trained with is refused at
start-up unless `--kb-changed-ok` is given.

`ChoiceTries` turns a request's `guided_choice` list (vLLM's field for the same thing) into a
`models.choice.ChoiceTrie`, keeping the last few so repeated lists cost nothing.

    labels, knowledge = run_extras(folder, kb_changed_ok=False)
    messages, ids = knowledge.apply(messages, tokenizer)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.methods.artifact import find_artifact, open_knowledge_base
from domaintune.methods.base import METHOD_FILE
from domaintune.models.choice import ChoiceTrie
from domaintune.models.context import query_text, render_context, with_context

TRIES_KEPT = 32


@dataclass(frozen=True)
class Knowledge:
    """A served model's knowledge base and how many entries of what size its prompts get."""

    kb: Any
    k: int
    max_tokens: int

    def apply(self, messages: Sequence[Mapping[str, str]], tokenizer: Any,
              forbidden: Sequence[str] = ()) -> tuple[list[dict[str, str]], list[int]]:
        """`messages` with the entries for their last user message, and the ids of those shown."""
        hits = self.kb.search([query_text(messages)], self.k)[0]
        block, shown = render_context(hits, tokenizer, self.max_tokens, forbidden)
        return with_context(messages, block), [h.entry.id for h in shown]


def run_extras(folder: Path, kb_changed_ok: bool = False) -> tuple[tuple[str, ...] | None, Knowledge | None]:
    """The closed answer set and the knowledge base a trained folder's run recorded (None each when none).

    Raises:
        UserError: the run's knowledge base is missing or changed (see `open_knowledge_base`).
    """
    if not (Path(folder) / METHOD_FILE).is_file():
        return None, None  # a plain PEFT folder records neither
    art = find_artifact(folder)
    labels = tuple(art.labels) if art.labels else None
    prior = art.prior
    if labels and prior and float(prior["weight"]) > 0:  # not yet mixed in here: say so, never silently
        import logging

        logging.getLogger(__name__).warning(
            "%s: the run's neighbour prior (weight %.2f, prior.json) is applied by `domaintune eval` only; "
            "serve decodes with the model alone, so its answers can differ from eval's", folder, float(prior["weight"]))
    record = art.retrieval
    if record is None:
        return labels, None
    kb = open_knowledge_base(record, allow_changed=kb_changed_ok)
    try:
        return labels, Knowledge(kb, int(record["k"]), int(record["max_tokens"]))
    except (KeyError, TypeError, ValueError):
        raise UserError("the run's retrieval.json lacks k or max_tokens", file=str(folder),
                        hint="train the run again") from None


class ChoiceTries:
    """`guided_choice` lists as tries for one template and tokenizer, the last `TRIES_KEPT` kept."""

    def __init__(self, template: Any, tokenizer: Any) -> None:
        self.template, self.tokenizer = template, tokenizer
        self._kept: OrderedDict[tuple[str, ...], ChoiceTrie] = OrderedDict()
        self._pinned: dict[tuple[str, ...], ChoiceTrie] = {}

    def pin(self, choices: Sequence[str]) -> ChoiceTrie:
        """Build a served model's own answer set once, at start-up (never evicted).

        Raises:
            UserError: this template cannot decode inside the set.
        """
        key = tuple(choices)
        if key not in self._pinned:
            self._pinned[key] = ChoiceTrie.build(key, self.template, self.tokenizer)
        return self._pinned[key]

    def get(self, choices: Sequence[str]) -> ChoiceTrie:
        key = tuple(choices)
        if key in self._pinned:
            return self._pinned[key]
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        trie = ChoiceTrie.build(key, self.template, self.tokenizer)
        self._kept[key] = trie
        if len(self._kept) > TRIES_KEPT:
            self._kept.popitem(last=False)
        return trie
