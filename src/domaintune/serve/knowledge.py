"""What a served adapter brings from its run besides weights: its answer set, knowledge base and prior.

A run that trained on labels records them (`labels.json`); one that trained with retrieval records
its knowledge base (`retrieval.json`); one whose prior helped on validation records it (`prior.json`,
`api/prior.py`: the vote of its nearest training pairs, or of a TF-IDF classifier of them). The
server loads all three with the adapter: requests to it are looked up in the same knowledge base,
rendered into the prompt the same way as in training, and answered with the ids of the entries used;
with `--closed-set auto` (or a `guided_choice` equal to the run's answer set) they decode inside the
run's answer set, mixing in the prior's vote with the weight training chose, exactly as `domaintune
eval` does. A knowledge base, index or classifier whose hash differs from the one the run trained
with is refused at start-up (`--kb-changed-ok` lets a changed knowledge base through, never a
changed prior).

`ChoiceTries` turns a request's `guided_choice` list (vLLM's field for the same thing) into a
`models.choice.ChoiceTrie`, keeping the last few so repeated lists cost nothing.

    extras = run_extras(folder, kb_changed_ok=False)
    messages, ids = extras.knowledge.apply(messages, tokenizer)
    vector = extras.prior.vector(messages, trie)          # the vote over trie.answers
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.methods.artifact import find_artifact, open_knowledge_base, open_prior
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


@dataclass(frozen=True)
class Prior:
    """A run's prior: its vote (`methods.artifact.open_prior`), its kind, and the vote's share."""

    vote: Callable[[Sequence[str]], list[dict[str, float]]] = field(repr=False)
    kind: str
    weight: float

    def vector(self, messages: Sequence[Mapping[str, str]], trie: ChoiceTrie) -> tuple[float, ...]:
        """The vote for the last user message (as the user wrote it, before any retrieved block:
        `api/prior.run_votes` looks eval's records up the same way), over `trie`'s answers."""
        return trie.prior_vector(self.vote([query_text(messages)])[0])


@dataclass(frozen=True)
class RunExtras:
    """What `run_extras` read: each None when the run recorded none."""

    labels: tuple[str, ...] | None = None
    knowledge: Knowledge | None = None
    prior: Prior | None = None


def run_extras(folder: Path, kb_changed_ok: bool = False) -> RunExtras:
    """The closed answer set, knowledge base and neighbour prior a trained folder's run recorded.

    A prior with weight 0 (the vote did not help on validation) is not loaded: the model decides alone.

    Raises:
        UserError: the run's knowledge base or prior is missing or changed
            (`open_knowledge_base`, `open_prior`).
    """
    if not (Path(folder) / METHOD_FILE).is_file():
        return RunExtras()  # a plain PEFT folder records none of them
    art = find_artifact(folder)
    labels = tuple(art.labels) if art.labels else None
    record, prior = art.prior, None
    if labels and record and float(record["weight"]) > 0:
        prior = Prior(open_prior(record), record["kind"], float(record["weight"]))
    retrieval = art.retrieval
    if retrieval is None:
        return RunExtras(labels, None, prior)
    kb = open_knowledge_base(retrieval, allow_changed=kb_changed_ok)
    try:
        return RunExtras(labels, Knowledge(kb, int(retrieval["k"]), int(retrieval["max_tokens"])), prior)
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
