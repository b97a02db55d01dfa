"""Closed-set training: teach the choices constrained decoding makes, not only the tokens it forces.

When the answers form a closed set, `eval` and `serve` decode inside a `models.choice.ChoiceTrie`:
at each step only the tokens that continue some answer may be picked, and where just one may, the
model has nothing to decide. Of an ICD-10 chapter name's ~9 tokens, ~1.6 are such decisions
("Diseases of the" is forced; "circulatory" vs "respiratory" is not); of an average example's
answer tokens, the token loss spends most of its weight on forced ones. PET (Schick and Schuetze,
2021) trains a label's probability renormalised over the label words for the same reason.

`mark_choices` walks each training example's answer through the trie and records, at every
position where the trie branches, the token ids allowed there (`Example.choices`); the collators
turn them into `choice_positions` / `choice_allowed` / `choice_mask`, and `models/loss.py` adds
the cross-entropy of the right token among the allowed ones (the trie's renormalised
distribution, exactly what decoding and its confidences use) to the token loss. Examples whose
answer is not a path of the trie (replayed general records, multi-turn prompts answered outside
the set) are left as they are.

    trie = ChoiceTrie.build(answers, template, tokenizer)
    examples, facts = mark_choices(examples, trie)   # facts: {"examples": 1050, "decisions": 1650}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from domaintune.models.batch import IGNORE_INDEX, Example


def mark_choices(examples: Sequence[Example], trie: Any) -> tuple[list[Example], dict[str, int]]:
    """`examples` with `choices` set where the final answer is a path of `trie`.

    Args:
        examples: encoded training examples.
        trie: the run's `ChoiceTrie` (the answers as the model writes them, end-of-turn id last).

    Returns:
        The examples (marked ones replaced, others as given) and facts for summary.json: how
        many examples were marked and how many decisions they hold.
    """
    out, marked, decisions = [], 0, 0
    for ex in examples:
        choices = answer_choices(ex.labels, trie)
        if choices:
            out.append(replace(ex, choices=choices))
            marked, decisions = marked + 1, decisions + len(choices)
        else:
            out.append(ex)
    return out, {"examples": marked, "decisions": decisions}


def answer_choices(labels: Sequence[int], trie: Any) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The branching points of the last trained span of `labels` through `trie`.

    Returns:
        `(label position, allowed token ids)` for each position where the trie allows more than
        one token, or `()` when the span does not spell an answer of the trie to its end.

    Example:
        >>> from domaintune.models.choice import ChoiceTrie
        >>> trie = ChoiceTrie([[5, 6, 9], [5, 7, 9]], ["a", "b"])
        >>> answer_choices([-100, -100, 5, 7, 9], trie)
        ((3, (6, 7)),)
    """
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    node, found = trie.root, []
    for pos in range(start, end):
        if not node.children:
            break  # the answer ended; trained tokens after the end-of-turn id are not decisions
        if len(node.children) > 1:
            found.append((pos, tuple(sorted(node.children))))
        node = node.children.get(labels[pos])
        if node is None:
            return ()
    return tuple(found) if not node.children else ()
