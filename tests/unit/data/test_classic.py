"""The classic classifier (data.classic): what it predicts is scikit-learn's logistic regression, and
what it saves loads back to the same probabilities, or not at all when a byte changed."""

from __future__ import annotations

import numpy as np
import pytest

from domaintune.data.classic import C_GRID, TextClassifier, fit_classifier, fit_vectorizers, transform
from domaintune.errors import UserError

WORDS = {"cardiology": "heart valve chest artery", "neurology": "brain nerve seizure spine",
         "oncology": "tumour cancer mass chemo"}


def _rows(n: int, labels: dict[str, str], seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    names = sorted(labels)
    ys = [names[i % len(names)] for i in range(n)]
    xs = [" ".join(rng.choice(labels[y].split() + ["patient", "pain", "the"], size=4)) for y in ys]
    return xs, ys


@pytest.mark.parametrize("labels", [WORDS, {k: WORDS[k] for k in ("cardiology", "oncology")}])
def test_probabilities_are_sklearns_and_survive_a_round_trip(labels, tmp_path):
    from sklearn.linear_model import LogisticRegression

    xs, ys = _rows(60, labels, 0)
    val_x, val_y = _rows(12, labels, 1)
    clf = fit_classifier(xs, ys, val_x, val_y)
    assert clf.settings["C"] in C_GRID and set(clf.settings["val_accuracy_by_C"]) == {str(c) for c in C_GRID}
    lr = LogisticRegression(C=clf.settings["C"], max_iter=2000).fit(transform(fit_vectorizers(xs), xs), ys)
    np.testing.assert_allclose(clf.proba(val_x), lr.predict_proba(transform(clf.vectorizers, val_x)), atol=1e-9)
    assert clf.predict(val_x) == list(lr.predict(transform(clf.vectorizers, val_x)))
    digest = clf.save(tmp_path / "clf")
    loaded = TextClassifier.load(tmp_path / "clf", digest)
    np.testing.assert_allclose(loaded.proba(val_x + ["words never seen"]), clf.proba(val_x + ["words never seen"]),
                               atol=1e-12)
    votes = loaded.votes(val_x)
    assert all(abs(sum(v.values()) - 1) < 1e-9 and set(v) == set(labels) for v in votes)


def test_a_changed_or_other_classifier_is_refused(tmp_path):
    xs, ys = _rows(30, WORDS, 0)
    digest = fit_classifier(xs, ys).save(tmp_path / "clf")
    with pytest.raises(UserError, match="changed"):
        TextClassifier.load(tmp_path / "clf", "0" * 64)  # not the one the run recorded
    weights = tmp_path / "clf" / "classifier.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="changed"):
        TextClassifier.load(tmp_path / "clf", digest)
    with pytest.raises(UserError, match="missing"):
        TextClassifier.load(tmp_path / "nothing")
