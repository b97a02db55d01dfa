"""The classic text classifier of a closed answer set: TF-IDF + multinomial logistic regression.

TF-IDF over word 1-2-grams and character 2-5-grams (scikit-learn, sublinear tf), logistic
regression with C chosen on validation (never on an evaluation split). It is the bag of words a
tuned model has to beat (`eval.baselines`), and one of the priors a run can mix into closed-set
decoding (`models.prior`, `api/prior.py`), so both use this one definition.

Saved without pickle (untrusted files are never unpickled): the vocabularies and classes as JSON,
the idf vectors, coefficients and intercepts as safetensors, and the sha256 of both in the JSON,
checked on load. Probabilities are computed here from the saved numbers, the same way for a fitted
and for a loaded classifier.

    clf, settings = fit_classifier(texts, labels, val_texts, val_labels)
    clf.save(folder); clf = TextClassifier.load(folder)
    clf.votes(["chest pain on exertion"])   # [{"cardiology": 0.81, ...}]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domaintune.errors import UserError
from domaintune.files import atomic_folder

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
FEATURES = {"word": {"ngram_range": (1, 2), "sublinear_tf": True},
            "char": {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True}}
META, WEIGHTS = "classifier.json", "classifier.safetensors"
FORMAT = "domaintune-tfidf-lr-1"


@dataclass
class TextClassifier:
    """Fitted TF-IDF vectorizers and the logistic regression's numbers (`coef` is [classes or 1, features])."""

    vectorizers: dict[str, Any]
    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def proba(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), len(classes)] probabilities, as sklearn's `predict_proba` gives them."""
        z = np.asarray(transform(self.vectorizers, texts) @ self.coef.T) + self.intercept
        if self.coef.shape[0] == 1:  # binary: sklearn keeps one row, p(classes[1]) = sigmoid(z)
            z = np.hstack([np.zeros_like(z), z])
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.proba(texts).argmax(axis=1)] if texts else []

    def votes(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Per text, answer -> probability (the form `models.choice.ChoiceTrie.prior_vector` reads)."""
        return [dict(zip(self.classes, map(float, row))) for row in self.proba(texts)] if texts else []

    def save(self, folder: Path) -> str:
        """Write the classifier into `folder` whole or not at all; returns the sha256 recorded."""
        from safetensors.numpy import save_file

        # C order: safetensors writes an array's memory as it lies, and sklearn's coef_ can be Fortran-ordered
        tensors = {"coef": np.ascontiguousarray(self.coef, dtype=np.float64),
                   "intercept": np.ascontiguousarray(self.intercept, dtype=np.float64)}
        vocab = {}
        for name in FEATURES:
            v = self.vectorizers[name]
            tensors[f"idf_{name}"] = np.ascontiguousarray(v.idf_, dtype=np.float64)
            vocab[name] = sorted(v.vocabulary_, key=v.vocabulary_.get)  # feature strings in column order
        with atomic_folder(folder) as tmp:
            save_file(tensors, str(tmp / WEIGHTS))
            body = {"format": FORMAT, "classes": self.classes, "vocabulary": vocab, "settings": self.settings}
            digest = _digest(body, (tmp / WEIGHTS).read_bytes())
            (tmp / META).write_text(json.dumps({**body, "sha256": digest}, ensure_ascii=False) + "\n", encoding="utf-8")
        return digest

    @classmethod
    def load(cls, folder: Path, sha256: str | None = None) -> TextClassifier:
        """Read a saved classifier, checking its hash (and that it is `sha256`, when given).

        Raises:
            UserError: missing, another format, or changed since it was written.
        """
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        try:
            body = json.loads((folder / META).read_text(encoding="utf-8"))
            raw = (folder / WEIGHTS).read_bytes()
        except (OSError, ValueError):
            raise UserError("the classifier is missing or unreadable", file=str(folder),
                            hint="train the run again") from None
        digest = body.pop("sha256", None)
        if body.get("format") != FORMAT or digest != _digest(body, raw) or (sha256 and digest != sha256):
            raise UserError("the classifier changed since training", file=str(folder / META),
                            hint="restore the files the run wrote, or train the run again")
        tensors = load_file(str(folder / WEIGHTS))
        vectorizers = {}
        for name, params in FEATURES.items():
            words = body["vocabulary"][name]
            v = TfidfVectorizer(**params, vocabulary={w: i for i, w in enumerate(words)})
            v.idf_ = tensors[f"idf_{name}"]
            vectorizers[name] = v
        return cls(vectorizers, list(body["classes"]), tensors["coef"], tensors["intercept"], body["settings"])


def fit_classifier(texts: Sequence[str], labels: Sequence[str], val_texts: Sequence[str] = (),
                   val_labels: Sequence[str] = ()) -> TextClassifier:
    """Fit on `texts` -> `labels` (at least two distinct), C chosen on the validation pairs
    (10 without them; the smallest C among equal validation accuracies)."""
    from sklearn.linear_model import LogisticRegression

    vectorizers = fit_vectorizers(texts)
    train_m = transform(vectorizers, texts)

    def fit(c: float) -> TextClassifier:
        lr = LogisticRegression(C=c, max_iter=2000).fit(train_m, list(labels))
        return TextClassifier(vectorizers, [str(x) for x in lr.classes_], lr.coef_, lr.intercept_, {"C": c})

    if not val_texts:
        return fit(10.0)
    fitted = {c: fit(c) for c in C_GRID}
    scores = {c: float(np.mean([p == y for p, y in zip(clf.predict(val_texts), val_labels)]))
              for c, clf in fitted.items()}
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    fitted[best].settings = {"C": best, "val_accuracy_by_C": {str(c): s for c, s in scores.items()}}
    return fitted[best]


def fit_vectorizers(texts: Sequence[str]) -> dict[str, Any]:
    """The word and character TF-IDF vectorizers fitted on `texts`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return {name: TfidfVectorizer(**params).fit(list(texts)) for name, params in FEATURES.items()}


def transform(vectorizers: dict[str, Any], texts: Sequence[str]) -> Any:
    """`texts` as the sparse [n, features] matrix: each part L2-normalised, side by side."""
    from scipy.sparse import hstack

    return hstack([vectorizers[name].transform(list(texts)) for name in FEATURES]).tocsr()


def _digest(body: dict[str, Any], weights: bytes) -> str:
    digest = hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode())
    digest.update(weights)
    return digest.hexdigest()
