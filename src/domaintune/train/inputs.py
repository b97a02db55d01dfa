"""What one training run (or stage) learns from: encoded examples, with replay, curriculum and term weights.

    inputs = build_inputs(train_records, val_records, cfg, tokenizer, template)
    inputs.train, inputs.buckets, inputs.val, inputs.reference, inputs.facts

Everything is encoded once, before the model is touched, so a recipe whose data cannot train
fails before any work. Term weights and closed-set decisions apply to training examples only: the validation loss stays
the plain loss, comparable with the base model's, and the EWC reference is the plain loss too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from domaintune.config import TrainConfig
from domaintune.data.terms import TermDict
from domaintune.errors import UserError
from domaintune.models.batch import Example, TermWeighter
from domaintune.train.data import describe_skips, encode_indexed, load_split, require_trainable
from domaintune.train.forgetting import MISSING, OTHER, length_ranks, metadata_ranks, replay_records

LENGTH = "length"


@dataclass
class Inputs:
    """A run's encoded data.

    Attributes:
        train: training examples: the domain's, then the replayed ones.
        val: validation examples (never term-weighted).
        buckets: each training example's curriculum bucket, or None without a curriculum.
        reference: EWC reference examples, or None without EWC.
        records: (domain train records, val records), for the lineage in summary.json.
        dropped: skip reasons of (domain train, val) records.
        facts: summary.json entries for replay, curriculum, terms and EWC.
    """

    train: list[Example]
    val: list[Example]
    buckets: list[int] | None
    reference: list[Example] | None
    records: tuple[Sequence[dict], Sequence[dict]]
    dropped: tuple[Counter[str], Counter[str]]
    facts: dict[str, Any] = field(default_factory=dict)


def build_inputs(train_records: Sequence[dict], val_records: Sequence[dict], cfg: TrainConfig, tokenizer: Any,
                 template: Any, choices: Any = None) -> Inputs:
    """Encode a run's data as `cfg` says: replay mixed in, curriculum buckets, term weights, EWC reference.

    Args:
        train_records, val_records: the domain's prepared records (`data.load_split`).
        cfg: the train section (one stage's, with stages).
        tokenizer, template: the model's tokenizer and chat template.
        choices: the run's `ChoiceTrie` (closed answer set): training examples whose answer it
            spells get their decisions marked (`train/closed_set.py`) when `cfg.closed_set_loss`,
            validation examples always (their accuracy is read off the validation loss pass).

    Returns:
        The `Inputs`.

    Raises:
        UserError: no domain token to train, a missing replay/reference/terms file.

    Example:
        >>> inputs = build_inputs(load_split("prepared/train.jsonl"), load_split("prepared/val.jsonl"),
        ...                       TrainConfig(), tok, tpl)  # doctest: +SKIP
    """
    encode = partial(encode_indexed, tokenizer=tokenizer, template=template, max_len=cfg.max_len,
                     truncation=cfg.truncation, train_on_prompt=cfg.train_on_prompt, keep_reasoning=cfg.keep_reasoning)
    facts: dict[str, Any] = {}
    weigh = partial(encode, term_weighter=_term_weighter(cfg, facts))
    domain, domain_kept, dropped = weigh(train_records)
    require_trainable(domain, dropped, getattr(train_records, "path", None), max_len=cfg.max_len,
                      truncation=cfg.truncation, train_on_prompt=cfg.train_on_prompt)
    replayed, replay_kept, general = _replay(train_records, cfg, weigh, facts)
    train = domain + replayed
    buckets = _buckets(cfg, train, (train_records, domain_kept), (general, replay_kept), facts)
    if "terms" in facts:
        facts["terms"]["weighted_tokens"] = sum(sum(1 for w in ex.weights or () if w != 1) for ex in train)
    val, _, val_dropped = encode(val_records)
    if choices is not None:
        from domaintune.train.closed_set import mark_choices

        if cfg.closed_set_loss:
            train, facts["closed_set_loss"] = mark_choices(train, choices)
        val, _ = mark_choices(val, choices)  # validation reads closed-set accuracy off its loss pass
    return Inputs(train, val, buckets, _reference(cfg, encode, facts), (train_records, val_records),
                  (dropped, val_dropped), facts)


def _term_weighter(cfg: TrainConfig, facts: dict[str, Any]) -> Any:
    if cfg.terms is None:
        return None
    terms = TermDict.from_file(cfg.terms)  # every form weighs, canonical or variant
    facts["terms"] = {"file": cfg.terms, "terms": len(terms.terms), "weight": cfg.term_weight}
    return TermWeighter(terms, cfg.term_weight)


def _replay(domain: Sequence[dict], cfg: TrainConfig, encode: Any,
            facts: dict[str, Any]) -> tuple[list[Example], list[int], list[dict]]:
    if cfg.replay is None:
        return [], [], []
    source = load_split(cfg.replay.data)
    records = replay_records(source, len(domain), cfg.replay.ratio, cfg.seed)
    examples, kept, dropped = encode(records)
    if records and not examples:
        raise UserError(f"no replay record can be trained ({describe_skips(dropped)})", file=str(source.path),
                        hint="replay prepared records with assistant answers (e.g. bundled:general_reference.jsonl), "
                             "or raise train.max_len")
    facts["replay"] = {"data": str(source.path), "sha256": source.sha256, "ratio": cfg.replay.ratio,
                       "file_records": len(source), "records": len(records),
                       "with_replacement": len(records) > len(source), "examples": len(examples),
                       "dropped": dict(dropped)}
    return examples, kept, records


def _buckets(cfg: TrainConfig, train: list[Example], domain: tuple[Sequence[dict], list[int]],
             replay: tuple[Sequence[dict], list[int]], facts: dict[str, Any]) -> list[int] | None:
    plan = cfg.curriculum
    if plan is None:
        return None
    if plan.by == LENGTH:
        ranks = length_ranks([len(ex) for ex in train], plan.length_buckets)
        facts["curriculum"] = {"by": LENGTH, "buckets": _length_labels(train, ranks)}
        return ranks
    ranks: list[int] = []
    odd: Counter[str] = Counter()
    for records, kept in (domain, replay):
        record_ranks, record_odd = metadata_ranks(records, plan.by, plan.order)
        ranks += [record_ranks[i] for i in kept]
        odd.update(record_odd)
    names = [str(value) for value in plan.order] + ["last"]
    counts = Counter(ranks)
    facts["curriculum"] = {"by": plan.by, "buckets": {name: counts[i] for i, name in enumerate(names)},
                           MISSING: odd[MISSING], OTHER: odd[OTHER]}
    return ranks


def _length_labels(train: list[Example], ranks: list[int]) -> dict[str, int]:
    spans: dict[int, list[int]] = {}
    for ex, rank in zip(train, ranks):
        spans.setdefault(rank, []).append(len(ex))
    return {f"{min(v)}-{max(v)} tokens": len(v) for _, v in sorted(spans.items())}


def _reference(cfg: TrainConfig, encode: Any, facts: dict[str, Any]) -> list[Example] | None:
    if cfg.ewc is None:
        return None
    source = load_split(cfg.ewc.reference)
    examples, _, dropped = encode(source)
    if not examples:
        raise UserError(f"no EWC reference record can be used ({describe_skips(dropped) or 'the file is empty'})",
                        file=str(source.path), hint="use prepared records with assistant answers "
                                                    "(e.g. bundled:general_reference.jsonl), or raise train.max_len")
    facts["ewc"] = {"reference": str(source.path), "sha256": source.sha256, "weight": cfg.ewc.weight,
                    "samples": min(cfg.ewc.samples, len(examples)), "fisher": "per example, token-mean loss"}
    return examples

