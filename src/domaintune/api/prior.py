"""The neighbour prior of a run with a closed answer set: fitted after training, read by eval and serve.

After training, the training pairs are indexed (`neighbours/`, a knowledge base of the plain pairs),
the saved model is loaded as eval and serve load it, and the prior's weight is chosen on the
validation split (`models.prior`); `prior.json` records the index's hash, k and the weight, with the
validation accuracy of every weight tried. Eval and serve look each question up in the same index and
mix the vote in with the recorded weight; a weight of 0 (the vote did not help on validation) decodes
with the model alone.

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
    from domaintune.data.kb import KnowledgeBase, entries_from_records
    from domaintune.methods.artifact import PRIOR_DIR, find_artifact, load_artifact, write_prior
    from domaintune.models.choice import ChoiceTrie
    from domaintune.models.prior import PRIOR_K, fit_prior_weight, path_decisions, vote_vectors

    run_dir = Path(run_dir)
    if not (enabled and answers and val_records):
        write_prior(run_dir, None)
        return None
    kb = KnowledgeBase.build(entries_from_records(train_records), sources=["prepared training pairs"])
    kb.save(run_dir / PRIOR_DIR)
    model = load_artifact(find_artifact(run_dir))
    trie = ChoiceTrie.build(answers, template, tokenizer)
    decisions = path_decisions(model, tokenizer, template, trie, val_records)
    fit = fit_prior_weight(decisions, vote_vectors(trie, votes_for(kb, val_records, PRIOR_K)))
    record = {"kb": PRIOR_DIR, "sha256": kb.sha256, "entries": len(kb), "k": PRIOR_K, **fit.record()}
    write_prior(run_dir, record)
    alone = fit.by_weight[0.0]
    log.info("neighbour prior: weight %.2f chosen on %d validation rows (accuracy %.1f%% alone, %.1f%% mixed)",
             fit.weight, fit.rows, alone, fit.accuracy)
    return record


def votes_for(kb: Any, records: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, float]]:
    """Each record's neighbour vote, looked up by the user's own question (never a retrieved block)."""
    from domaintune.data.kb import neighbour_votes
    from domaintune.models.context import question_text

    return neighbour_votes(kb, [question_text(r) for r in records], k)


def run_votes(record: dict[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float]] | None:
    """The votes eval mixes in for `records` under a run's prior record (None: no prior, or weight 0)."""
    from domaintune.methods.artifact import open_prior_index

    if not record or float(record["weight"]) <= 0:
        return None
    return votes_for(open_prior_index(record), records, int(record["k"]))
