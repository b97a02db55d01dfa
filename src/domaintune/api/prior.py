"""The prior of a run with a closed answer set: fitted after training, read by eval and serve.

After training, two classic models of the training pairs are built: an index of the plain pairs
(`neighbours/`, whose 16 nearest pairs vote for their answers) and a TF-IDF + logistic-regression
classifier (`classifier/`, `data.classic`, C chosen on validation). The saved model is loaded as eval
and serve load it, and for each the weight of its vote in decoding is chosen on the validation split
(`models.prior`); the kind and weight with the best validation accuracy are kept (the smaller weight,
then the neighbours, among equals). `prior.json` records the kind, the hashes of both, k and the
weight, with the validation accuracy of every weight of every kind. Eval and serve look each question
up the same way (`methods.artifact.open_prior`) and mix the vote in with the recorded weight; a weight
of 0 (no vote helped on validation) decodes with the model alone.

    fit = fit_run_prior(run_dir, template, tokenizer, train_records, val_records, answers)
    votes = run_votes(artifact.prior, records)        # None: the run has no prior, or weight 0
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def fit_run_prior(run_dir: Path, template: Any, tokenizer: Any, train_records: Sequence[Mapping[str, Any]],
                  val_records: Sequence[Mapping[str, Any]], answers: list[str] | None,
                  enabled: bool = True) -> dict[str, Any] | None:
    """Index the training pairs, choose the prior's weight on validation, write prior.json.

    Args:
        run_dir: the finished run folder (its saved weights are loaded from there).
        template, tokenizer: the run's.
        train_records: the plain training pairs (no retrieved block in their prompts).
        val_records: the validation records as the model reads them (retrieval blocks included).
        answers: the closed answer set (None: no prior).
        enabled: `train.neighbour_prior`.

    Returns:
        The record written, or None (no closed set, no validation, or turned off).
    """
    from domaintune.data.answers import final_answer
    from domaintune.data.classic import fit_classifier
    from domaintune.data.kb import KnowledgeBase, entries_from_records
    from domaintune.methods.artifact import (PRIOR_CLASSIFIER, PRIOR_DIR, find_artifact, load_artifact, open_prior,
                                            write_prior)
    from domaintune.models.choice import ChoiceTrie
    from domaintune.models.context import question_text
    from domaintune.models.prior import PRIOR_K, fit_prior_weight, path_decisions, vote_vectors

    run_dir = Path(run_dir)
    if not (enabled and answers and val_records):
        write_prior(run_dir, None)
        return None
    kb = KnowledgeBase.build(entries_from_records(train_records), sources=["prepared training pairs"])
    kb.save(run_dir / PRIOR_DIR)
    record: dict[str, Any] = {"kind": "neighbours", "kb": PRIOR_DIR, "sha256": kb.sha256, "entries": len(kb),
                              "k": PRIOR_K}
    pairs = [(question_text(r), (final_answer(r) or "").strip()) for r in train_records]
    val_pairs = [(question_text(r), (final_answer(r) or "").strip()) for r in val_records]
    if len({y for _, y in pairs if y}) >= 2:
        clf = fit_classifier([x for x, y in pairs if y], [y for _, y in pairs if y],
                             [x for x, _ in val_pairs], [y for _, y in val_pairs])
        record.update(classifier=PRIOR_CLASSIFIER, classifier_sha256=clf.save(run_dir / PRIOR_CLASSIFIER),
                      classifier_C=clf.settings.get("C"))
    model = load_artifact(find_artifact(run_dir))
    trie = ChoiceTrie.build(answers, template, tokenizer)
    decisions = path_decisions(model, tokenizer, template, trie, val_records)
    questions = [x for x, _ in val_pairs]
    fits = {}
    for kind in ("neighbours", "tfidf_lr") if "classifier" in record else ("neighbours",):
        votes = open_prior({**record, "kind": kind, "kb": str(run_dir / PRIOR_DIR),
                            "classifier": str(run_dir / PRIOR_CLASSIFIER)})(questions)
        fits[kind] = fit_prior_weight(decisions, vote_vectors(trie, votes))
    kind = max(fits, key=lambda k: (fits[k].accuracy, -fits[k].weight))  # dicts keep order: neighbours first
    fit = fits[kind]
    record.update(kind=kind, **fit.record(), by_kind={k: f.record() for k, f in fits.items()})
    write_prior(run_dir, record)
    alone = fit.by_weight[0.0]
    log.info("prior: %s, weight %.2f chosen on %d validation rows (accuracy %.1f%% alone, %.1f%% mixed)",
             kind, fit.weight, fit.rows, alone, fit.accuracy)
    return record


def run_votes(record: dict[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]] | None:
    """The votes eval mixes in for `records` under a run's prior record (None: no prior, or weight 0),
    each looked up by the user's own question (never a retrieved block)."""
    from domaintune.methods.artifact import open_prior
    from domaintune.models.context import question_text

    if not record or float(record["weight"]) <= 0:
        return None
    return open_prior(record)([question_text(r) for r in records])
