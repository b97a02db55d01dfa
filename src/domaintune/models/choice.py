"""Closed-set answers: decoding constrained to a fixed list of answers, with each answer's probability.

When a task's answers form a closed set (labels, codes, categories), free decoding can produce a
near-miss nobody can score ("Diseases of the blood" for "Diseases of the blood and blood-forming
organs ..."). A `ChoiceTrie` holds every answer as the token ids the model emits for it after the
generation prompt, each ending with the template's end-of-turn id; at every step the decoder may
only pick a token that continues some answer (a prefix trie over token ids, the same idea as
vLLM's `guided_choice`), so no answer outside the set can come out.

The confidence of an answer is the product, over the steps, of the picked token's probability
renormalised over the tokens the trie allows there: the model's distribution restricted to the
set. Steps where only one token is allowed contribute 1, and the confidences of all answers sum
to 1 (a test checks it by forcing each path).

    trie = ChoiceTrie.build(["Yes", "No"], template, tokenizer)
    params = SamplingParams(max_new_tokens=trie.depth, stop_ids=trie.stop_ids, choices=trie)

A row may also carry a prior over the answers (`models/prior.py`: a vote of the nearest training
pairs, or a classifier's probabilities) and a weight w: at each step the distribution over the
allowed tokens becomes (1 - w) * model + w * prior (kNN-LM's interpolation, on the trie), where the
prior's share of a token is the prior of the BEST answer below it, normalised over the allowed
tokens. So w = 1 decodes the prior's own top answer and w = 0 the model alone; each step's mixed
distribution sums to 1, so the confidences of all answers still sum to 1. (Shares by the prior's
total mass below a token would be the exact marginals, but greedy decoding on marginals follows
the heaviest prefix, not the best answer: on banking77, whose intents share first tokens, the
TF-IDF classifier decoded that way scored 67.3 % on validation against its own 71.4 %.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from domaintune.errors import UserError

_PROBE = [{"role": "user", "content": "?"}]


class _Node:
    __slots__ = ("children", "answer", "allowed", "below")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.answer: str | None = None  # set on the node after an answer's last token
        self.allowed: torch.Tensor | None = None
        self.below: list[int] = []  # indices (into ChoiceTrie.answers) of the answers under this node


class ChoiceTrie:
    """Every answer of a closed set as a path of token ids from the root to a leaf.

    Args:
        sequences: each answer's token ids, its end-of-turn id last.
        answers: the answer strings, in the order of `sequences`.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], answers: Sequence[str]) -> None:
        if not sequences:
            raise ValueError("a closed answer set needs at least one answer")
        self.root = _Node()
        self.answers = list(dict.fromkeys(answers))
        self.depth = max(len(s) for s in sequences)
        self.stop_ids = tuple(sorted({s[-1] for s in sequences}))
        self.sequences: dict[str, tuple[int, ...]] = {}
        index = {a: i for i, a in enumerate(self.answers)}
        for seq, answer in zip(sequences, answers, strict=True):
            if not seq:
                raise ValueError(f"answer {answer!r} has no tokens")
            node = self.root
            path = [node]
            for token in seq:
                node = node.children.setdefault(int(token), _Node())
                path.append(node)
            if node.answer is None:  # two answers with the same ids: the first one names the path
                node.answer = answer
                self.sequences[answer] = tuple(int(t) for t in seq)
                for visited in path:
                    visited.below.append(index[answer])

    @classmethod
    def build(cls, answers: Iterable[str], template: Any, tokenizer: Any) -> ChoiceTrie:
        """The trie of `answers` as the model writes them after `template`'s generation prompt.

        Each answer's ids are the ids training gives it: the tokens of a rendered conversation
        after those of its prompt, through the first end-of-turn id. A template whose prompt is
        not a prefix of the conversation's tokens cannot be constrained.

        Raises:
            UserError: no answers, or the template writes no end-of-turn token this tokenizer has.
        """
        from domaintune.models.codec import stop_ids as template_stop_ids

        answers = [a for a in dict.fromkeys(str(a) for a in answers)]
        if not answers:
            raise UserError("the closed answer set is empty", hint="give at least one answer")
        stops = set(template_stop_ids(template, tokenizer))
        prompt = _ids(tokenizer, template.render(_PROBE, add_generation_prompt=True))
        sequences = []
        for answer in answers:
            full = _ids(tokenizer, template.render([*_PROBE, {"role": "assistant", "content": answer}]))
            if full[:len(prompt)] != prompt:
                raise UserError(f"template '{template.name}' tokenizes answers together with their prompt, "
                                "so a closed answer set cannot be decoded token by token",
                                hint="use the chatml template, or decode freely (eval.closed_set: off)")
            rest = full[len(prompt):]
            end = next((i for i, t in enumerate(rest) if t in stops), None)
            if end is None:
                raise UserError(f"template '{template.name}' ends no answer with a stop token of this tokenizer",
                                hint="decode freely (eval.closed_set: off)")
            sequences.append(rest[:end + 1])
        return cls(sequences, answers)

    def cursor(self, prior: Sequence[float] | None = None, weight: float = 0.0) -> ChoiceCursor:
        """A fresh position at the root, for one row, optionally mixing `prior` (one weight per
        answer, in `answers` order) into each step with `weight`."""
        return ChoiceCursor(self, prior, weight)

    def prior_vector(self, votes: Mapping[str, float]) -> tuple[float, ...]:
        """`votes` (answer -> weight; answers outside the set are ignored) as a vector over `answers`."""
        return tuple(float(votes.get(a, 0.0)) for a in self.answers)

    def __len__(self) -> int:
        return len(self.answers)


class ChoiceCursor:
    """One row's position in a `ChoiceTrie`, and the log-probability of the path so far."""

    def __init__(self, trie: ChoiceTrie, prior: Sequence[float] | None = None, weight: float = 0.0) -> None:
        self.node, self.log_prob = trie.root, 0.0
        if prior is not None and len(prior) != len(trie.answers):
            raise ValueError(f"a prior over {len(prior)} answers for a set of {len(trie.answers)}")
        self.prior = (torch.tensor(prior, dtype=torch.float64)
                      if prior is not None and weight > 0 and sum(prior) > 0 else None)
        self.weight = float(weight)

    @property
    def done(self) -> bool:
        """True once the path reached the end of an answer."""
        return not self.node.children

    @property
    def answer(self) -> str | None:
        """The answer the path spells, once `done`."""
        return self.node.answer

    def allowed(self, device: torch.device) -> torch.Tensor:
        """The token ids that continue some answer from here."""
        node = self.node
        if node.allowed is None or node.allowed.device != device:
            node.allowed = torch.tensor(sorted(node.children), dtype=torch.long, device=device)
        return node.allowed

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over `allowed` from the model's logits there, mixed with the prior."""
        log_p = torch.log_softmax(logits.float(), dim=-1)
        if self.prior is None:
            return log_p
        return mix_log_probs(log_p, self.prior_shares(), self.weight)

    def prior_shares(self) -> torch.Tensor | None:
        """The prior's distribution over `allowed` here (None: no prior mass below this node)."""
        if self.prior is None:
            return None
        return prior_shares(self.node, self.prior)

    def advance(self, token: int, log_prob: float) -> None:
        """Follow `token` (one of `allowed`), adding its renormalised log-probability."""
        self.node = self.node.children[token]
        self.log_prob += log_prob


def prior_shares(node: _Node, prior: torch.Tensor) -> torch.Tensor | None:
    """Per child of `node` (in token-id order, as `allowed`), the prior of the best answer below it,
    normalised over the children (None: no prior mass below `node`)."""
    mass = torch.stack([prior[node.children[t].below].max() for t in sorted(node.children)])
    total = mass.sum()
    return mass / total if total > 0 else None


def mix_log_probs(log_p: torch.Tensor, shares: torch.Tensor | None, weight: float) -> torch.Tensor:
    """log((1 - weight) * exp(log_p) + weight * shares); `log_p` alone when `shares` is None."""
    if shares is None or weight <= 0:
        return log_p
    mixed = (1 - weight) * log_p.double().exp() + weight * shares.to(log_p.device)
    return mixed.clamp_min(1e-300).log().to(log_p.dtype)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
