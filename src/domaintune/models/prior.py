"""The neighbour prior of a closed answer set: a vote of the nearest training pairs, mixed into
constrained decoding with a weight chosen on validation (kNN-LM's interpolation, on the answer trie).

A fine-tuned model that has seen each training pair once or twice does not remember all of them;
a lexical index of the same pairs does. For each question the `k` best training pairs by BM25
(`data.kb.neighbour_votes`) vote for their answers; decoding mixes that vote into every step with
a weight w (`models.choice`). w is chosen where it is measured, on the validation split, by
`fit_prior_weight`, and w = 0 (the model alone) wins every tie, so a vote that does not help is off.

Choosing w costs one teacher-forced pass over validation, not one decode per candidate weight:
greedy decoding inside the trie is right on an example if and only if the right token wins at every
decision of the right answer's path, and along that path the model's distribution is the
teacher-forced one (`models.loss.closed_set_hits` uses the same fact). `path_decisions` keeps, at
each decision, the model's log-probabilities over the allowed tokens and the vote's shares; every
w in the grid is then scored exactly, in milliseconds.

    decisions = path_decisions(model, tok, template, trie, val_records)
    fit = fit_prior_weight(trie, decisions, [trie.prior_vector(v) for v in votes])
    fit.weight, fit.accuracy
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from domaintune.data.answers import final_answer
from domaintune.models.choice import ChoiceTrie, mix_log_probs, prior_shares
from domaintune.models.codec import pad_id, prompt_ids
from domaintune.models.context import before_answer

PRIOR_K = 16  # neighbours that vote: fixed across tasks (rank weights, see data.kb.neighbour_votes)
WEIGHTS = tuple(round(i / 20, 2) for i in range(21))  # the grid w is chosen from, 0 first


@dataclass(frozen=True)
class Decision:
    """One decision along the right answer's path: the model's log-probabilities over the allowed
    tokens (token-id order), the right token's index among them, and the trie node it is taken at."""

    log_probs: torch.Tensor
    right: int
    node: Any


@dataclass(frozen=True)
class PriorFit:
    """The chosen weight, its validation accuracy (%), and the accuracy of every weight tried."""

    weight: float
    accuracy: float
    by_weight: dict[float, float]
    rows: int

    def record(self) -> dict[str, Any]:
        return {"weight": self.weight, "val_accuracy": self.accuracy, "val_rows": self.rows,
                "val_accuracy_by_weight": {str(w): a for w, a in self.by_weight.items()}}


@torch.inference_mode()
def path_decisions(model: Any, tokenizer: Any, template: Any, trie: ChoiceTrie,
                   records: Sequence[Mapping[str, Any]], batch_size: int = 16) -> list[list[Decision] | None]:
    """Per record, its decisions along the right answer's path (None: its answer is not in the set,
    so no decoding inside the set can answer it right)."""
    items: list[tuple[int, list[int], tuple[int, ...]]] = []
    out: list[list[Decision] | None] = [None] * len(records)
    for i, record in enumerate(records):
        sequence = trie.sequences.get((final_answer(record) or "").strip())
        if sequence is not None:
            items.append((i, prompt_ids(template, tokenizer, before_answer(record["messages"])), sequence))
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            for (i, prompt, sequence), logits in zip(chunk, _answer_logits(model, tokenizer, chunk)):
                out[i] = _walk(trie, sequence, logits)
    finally:
        model.train(was_training)
    return out


def _answer_logits(model: Any, tokenizer: Any, chunk: Sequence[tuple[int, list[int], tuple[int, ...]]]):
    """Per item, the `[len(answer), V]` logits that predict each of its answer's tokens."""
    rows = [prompt + list(sequence[:-1]) for _, prompt, sequence in chunk]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = torch.as_tensor(row), 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    logits = logits[:, -width:]  # prompt tuning puts virtual tokens first
    for r, (_, prompt, sequence) in enumerate(chunk):
        yield logits[r, len(prompt) - 1:len(prompt) - 1 + len(sequence)].float()


def _walk(trie: ChoiceTrie, sequence: Sequence[int], logits: torch.Tensor) -> list[Decision]:
    decisions, node = [], trie.root
    for t, token in enumerate(sequence):
        allowed = sorted(node.children)
        if len(allowed) > 1:
            log_p = torch.log_softmax(logits[t, allowed], dim=-1).cpu()
            decisions.append(Decision(log_p, allowed.index(token), node))
        node = node.children[token]
    return decisions


def fit_prior_weight(decisions: Sequence[list[Decision] | None], priors: Sequence[Sequence[float]],
                     weights: Sequence[float] = WEIGHTS) -> PriorFit:
    """The weight of `weights` with the best validation accuracy (the smallest among equals).

    Args:
        decisions: `path_decisions` of the validation records.
        priors: per record, its vote as a vector over the trie's answers (`ChoiceTrie.prior_vector`).
        weights: the candidate weights.
    """
    shares = []
    for d, p in zip(decisions, priors, strict=True):
        vector = torch.tensor(p, dtype=torch.float64)
        shares.append(None if d is None or vector.sum() <= 0 else [prior_shares(x.node, vector) for x in d])
    by_weight = {}
    for w in weights:
        right = sum(1 for d, s in zip(decisions, shares)
                    if d is not None and all(int(mix_log_probs(x.log_probs, None if s is None else s[j], w).argmax())
                                             == x.right for j, x in enumerate(d)))
        by_weight[float(w)] = 100.0 * right / len(decisions) if decisions else 0.0
    best = max(by_weight.values())
    weight = min(w for w, a in by_weight.items() if a == best)
    return PriorFit(weight, best, by_weight, len(decisions))


def vote_vectors(trie: ChoiceTrie, votes: Sequence[Mapping[str, float]]) -> list[tuple[float, ...]]:
    """Each vote as a vector over the trie's answers."""
    return [trie.prior_vector(v) for v in votes]
