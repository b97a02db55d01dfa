"""Input drift: how far a window of live prompts (and the labels predicted for them) is from the
training data, with alarm thresholds taken from the training data itself.

Statistics of one window against the reference (the training prompts):

* `unigram_kl`: KL(window || reference) of word unigram distributions (`data.kb.kb_tokens`: lower-cased
  words, Chinese segmented by jieba), add-half smoothed over the reference vocabulary plus one
  bucket for unseen words, so a window full of words training never saw scores high;
* `length_psi`: the population-stability index of prompt lengths in words, over the reference's
  deciles;
* `label_psi` (closed answer sets): the PSI of the predicted-label distribution against the
  training answers' distribution;
* `confidence_drop` (when confidences are known and the reference gives some): the reference's mean
  confidence minus the window's.

A statistic's value depends on the window's size (a small window of in-distribution prompts has a
noisy unigram distribution too), so no fixed number is a threshold. The reference is split at
random: 70 % give the distributions windows are compared with, and each threshold is the `quantile`
(0.99) of the statistic over `bootstraps` windows of the same size drawn from the other 30 %.
Those held-out rows carry words and lengths the 70 % never saw, as new in-distribution traffic
does, so an in-distribution window exceeds a threshold about 1 % of the time, whatever the data
(windows drawn from the distribution's own rows would never see an unseen word, and alarm on
every new in-distribution one).

    monitor = DriftMonitor(train_prompts, train_answers, window=200)
    report = monitor.check(live_prompts[-200:], predicted=live_labels[-200:])
    report["unigram_kl"].alarm
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from domaintune.data.kb import kb_tokens

UNSEEN = "\x00unseen"  # the bucket every word outside the reference vocabulary falls into
ALPHA, EPS = 0.5, 1e-4
BOOTSTRAPS, QUANTILE = 200, 0.99
FIT_SHARE = 0.7  # of the reference: the distributions; the rest: the thresholds


@dataclass(frozen=True)
class Statistic:
    """One statistic of one window: its value, the reference's threshold for the window's size, and
    whether the value is over it."""

    value: float
    threshold: float

    @property
    def alarm(self) -> bool:
        return self.value > self.threshold

    def as_dict(self) -> dict[str, float | bool]:
        return {"value": round(self.value, 6), "threshold": round(self.threshold, 6), "alarm": self.alarm}


class DriftMonitor:
    """The reference's distributions and, per window size, its thresholds (see the module docstring).

    Args:
        texts: the reference prompts (the training split's user messages).
        labels: the reference answers of a closed answer set (None: no label statistic).
        confidences: the model's confidences on reference-like data (e.g. validation), or None.
        bootstraps, quantile: how thresholds are drawn from the reference.
        seed: the bootstrap's seed (the same reference always gives the same thresholds).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[str] | None = None,
                 confidences: Sequence[float] | None = None, *, bootstraps: int = BOOTSTRAPS,
                 quantile: float = QUANTILE, seed: int = 0) -> None:
        if len(texts) < 2:
            raise ValueError("a drift reference needs at least two prompts")
        order = np.random.default_rng(seed).permutation(len(texts))
        cut = max(1, min(len(texts) - 1, round(FIT_SHARE * len(texts))))
        fit, held = sorted(order[:cut]), sorted(order[cut:])
        tokens = [kb_tokens(t) for t in texts]
        self.tokens = [tokens[i] for i in fit]
        self.unigrams = Counter(w for ws in self.tokens for w in ws)
        self.vocab = sorted(self.unigrams) + [UNSEEN]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.ref_p = _smoothed(self._counts(self.unigrams))
        lengths = np.array([len(ws) for ws in self.tokens], dtype=float)
        self.edges = np.unique(np.quantile(lengths, np.linspace(0.1, 0.9, 9)))
        self.ref_lengths = _fractions(np.searchsorted(self.edges, lengths, side="right"), len(self.edges) + 1)
        self.labels = sorted(set(labels)) if labels else None
        self.ref_labels = self._label_fractions([labels[i] for i in fit]) if labels else None
        self.ref_confidence = float(np.mean(confidences)) if confidences else None
        # what thresholds are drawn from: the held-out rows (confidences are the model's on other data)
        self._held = [tokens[i] for i in held]
        self._held_labels = [labels[i] for i in held] if labels else []
        self._confidences = list(confidences or [])
        self.bootstraps, self.quantile, self.seed = bootstraps, quantile, seed
        self._thresholds: dict[int, dict[str, float]] = {}

    def check(self, texts: Sequence[str], predicted: Sequence[str] | None = None,
              confidences: Sequence[float | None] | None = None) -> dict[str, Statistic]:
        """The statistics of one window of live prompts (with their predicted labels and confidences)."""
        values = self._values([kb_tokens(t) for t in texts], predicted, confidences)
        limits = self.thresholds(len(texts))
        return {name: Statistic(value, limits[name]) for name, value in values.items() if name in limits}

    def thresholds(self, size: int) -> dict[str, float]:
        """Each statistic's `quantile` over bootstrap windows of `size` held-out reference rows (cached per size)."""
        if size not in self._thresholds:
            rng = np.random.default_rng(self.seed)
            n = len(self._held)
            draws: dict[str, list[float]] = {}
            for _ in range(self.bootstraps):
                rows = rng.integers(0, n, size=size)
                labels = [self._held_labels[i] for i in rows] if self._held_labels else None
                confs = list(rng.choice(self._confidences, size=size)) if self._confidences else None
                for name, value in self._values([self._held[i] for i in rows], labels, confs).items():
                    draws.setdefault(name, []).append(value)
            self._thresholds[size] = {name: float(np.quantile(v, self.quantile)) for name, v in draws.items()}
        return self._thresholds[size]

    def _values(self, tokens: Sequence[Sequence[str]], predicted: Sequence[str] | None,
                confidences: Sequence[float | None] | None) -> dict[str, float]:
        counts = self._counts(Counter(w for ws in tokens for w in ws))
        out = {"unigram_kl": _kl(_smoothed(counts), self.ref_p)}
        lengths = np.array([len(ws) for ws in tokens], dtype=float)
        bins = np.searchsorted(self.edges, lengths, side="right")
        out["length_psi"] = _psi(_fractions(bins, len(self.edges) + 1), self.ref_lengths)
        if self.ref_labels is not None and predicted:
            out["label_psi"] = _psi(self._label_fractions(predicted), self.ref_labels)
        known = [c for c in (confidences or []) if c is not None]
        if self.ref_confidence is not None and known:
            out["confidence_drop"] = self.ref_confidence - float(np.mean(known))
        return out

    def _counts(self, unigrams: Counter[str]) -> np.ndarray:
        counts = np.zeros(len(self.vocab))
        for word, n in unigrams.items():
            counts[self.index.get(word, len(self.vocab) - 1)] += n
        return counts

    def _label_fractions(self, labels: Sequence[str]) -> np.ndarray:
        names = (self.labels or []) + ["\x00other"]
        position = {name: i for i, name in enumerate(names)}
        bins = np.array([position.get(str(x), len(names) - 1) for x in labels])
        return _fractions(bins, len(names))


def _smoothed(counts: np.ndarray) -> np.ndarray:
    p = counts + ALPHA
    return p / p.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def _fractions(bins: np.ndarray, width: int) -> np.ndarray:
    counts = np.bincount(bins.astype(int), minlength=width).astype(float)
    return counts / max(1.0, counts.sum())


def _psi(live: np.ndarray, ref: np.ndarray) -> float:
    a, b = np.clip(live, EPS, None), np.clip(ref, EPS, None)
    return float(np.sum((a - b) * np.log(a / b)))


def windows(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) windows of `size` rows over `n` rows (a last, shorter one when at
    least half a window is left)."""
    out = [(s, s + size) for s in range(0, n - size + 1, size)]
    tail = out[-1][1] if out else 0
    if n - tail >= max(1, math.ceil(size / 2)):
        out.append((tail, n))
    return out
