"""Guards against forgetting what the base model knew: replay, EWC, and curriculum buckets.

    extra = replay_records(general, n_domain=len(train), ratio=0.2, seed=0)   # mixed into training
    ewc = build_ewc(model, params, reference_examples, samples=64, seed=0, pad_id=0, weight=100.0)
    loss = ce + ewc.penalty(params)                                          # every optimizer step
    ranks, odd = metadata_ranks(records, "metadata.difficulty", ["easy", "medium", "hard"])

Design choices:

* Replay draws `round(ratio * n_domain)` general records once per run with `data.mix.sample_rows`
  (without replacement unless the file is smaller: then every record as often as fits, plus a
  random rest), so the mix is fixed by the seed and a resume sees the same examples.
* EWC (Kirkpatrick et al. 2017) with the empirical diagonal Fisher: for each of `samples`
  reference examples (drawn by the seed), the gradient of that example's token-mean loss with
  respect to the TRAINABLE parameters, squared; F is the mean over examples. Per example rather
  than per batch, since squaring a batch gradient drops the spread between examples, which is
  what F measures. It is computed in eval mode (no dropout): the model as it is. The anchor is the
  trainable values at the start. With LoRA, B starts at zero, so A's Fisher is zero and only B
  is held back; the adapter's product B·A, hence its effect, still is.
* Fisher and anchor go to `run_dir/ewc.safetensors`, written atomically before the first
  checkpoint; its sha256 is kept in the checkpoint's state, so a resume loads exactly the tensors
  the run started with (recomputing them after a resume would see moved weights).
* Curriculum buckets: a rank per record (by a metadata field, in the order given) or per example
  (by token length, equal-size buckets, shortest first); what cannot be ranked goes last.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from domaintune.data.mix import sample_rows
from domaintune.errors import UserError
from domaintune.files import atomic_path
from domaintune.models.batch import Example, collate_padded
from domaintune.models.loss import causal_lm_loss
from domaintune.train.step import autocast, to_device

EWC_FILE = "ewc.safetensors"
MISSING, OTHER = "missing_field", "unlisted_value"


# ---------------------------------------------------------------------------------------------- replay

def replay_records(general: Sequence[dict[str, Any]], n_domain: int, ratio: float, seed: int) -> list[dict[str, Any]]:
    """The general records to mix into training: `round(ratio * n_domain)` of them, drawn by the seed.

    Args:
        general: the replay file's records (prepared format).
        n_domain: domain training records.
        ratio: replay records per domain record.
        seed: the run's seed; the same seed draws the same records.

    Returns:
        The drawn records (repeats only when more are wanted than the file holds).

    Raises:
        UserError: the replay file holds no record.

    Example:
        >>> len(replay_records([{"text": "a"}, {"text": "b"}], n_domain=10, ratio=0.3, seed=0))
        3
    """
    if not general:
        raise UserError("the replay file holds no record", file=str(getattr(general, "path", "") or None),
                        hint="point train.replay.data at prepared JSONL with general records")
    return [general[i] for i in sample_rows(len(general), round(ratio * n_domain), seed=f"replay:{seed}")]


# ------------------------------------------------------------------------------------------------- EWC

class Ewc:
    """An elastic-weight-consolidation penalty: `weight/2 * sum(F * (theta - anchor)^2)`.

    Args:
        fisher: name -> diagonal Fisher information of that trainable parameter.
        anchor: name -> the parameter's value at the start.
        weight: lambda.
    """

    def __init__(self, fisher: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor],
                 weight: float) -> None:
        if fisher.keys() != anchor.keys():
            raise ValueError("fisher and anchor must name the same parameters")
        self.fisher, self.anchor, self.weight = dict(fisher), dict(anchor), weight

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The penalty for the current `params` (a scalar with a graph through them).

        Example:
            >>> ewc = Ewc({"w": torch.ones(2)}, {"w": torch.zeros(2)}, weight=2.0)
            >>> float(ewc.penalty({"w": torch.tensor([1.0, 2.0])}))
            5.0
        """
        total = sum(((params[n] - self.anchor[n]).pow(2) * f).sum() for n, f in self.fisher.items())
        return 0.5 * self.weight * total

    def to(self, device: torch.device) -> Ewc:
        """The same penalty with its tensors on `device`."""
        return Ewc({n: t.to(device) for n, t in self.fisher.items()},
                   {n: t.to(device) for n, t in self.anchor.items()}, self.weight)

    def save(self, path: Path) -> str:
        """Write fisher and anchor to a safetensors file atomically; returns its sha256."""
        path = Path(path)
        tensors = {f"fisher.{n}": t.detach().cpu().contiguous() for n, t in self.fisher.items()}
        tensors |= {f"anchor.{n}": t.detach().cpu().contiguous() for n, t in self.anchor.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        return _sha256(path)

    @classmethod
    def load(cls, path: Path, weight: float, sha256: str | None) -> Ewc:
        """Read what `save` wrote, checking it is the file the run started with.

        Raises:
            UserError: the file is missing or its sha256 differs from `sha256`.
        """
        path = Path(path)
        if not path.is_file() or (sha256 is not None and _sha256(path) != sha256):
            raise UserError("the EWC Fisher/anchor file of this run is missing or changed", file=str(path),
                            hint="resume needs the file written when the run started; else start over with --force")
        tensors = load_file(str(path), device="cpu")
        return cls(_prefixed(tensors, "fisher."), _prefixed(tensors, "anchor."), weight)


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): t for k, t in tensors.items() if k.startswith(prefix)}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fisher_diagonal(model: Any, params: Mapping[str, torch.Tensor],
                    batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over `batches` of the squared gradient of each batch's token-mean loss, per parameter.

    Runs in eval mode and leaves every `.grad` untouched (it uses `torch.autograd.grad`).

    Args:
        model: the model.
        params: name -> trainable parameter.
        batches: one example per batch for the per-example (empirical) Fisher.

    Returns:
        name -> a tensor shaped like the parameter (fp32, on its device).
    """
    was_training = model.training
    model.eval()
    names, tensors = list(params), list(params.values())
    fisher = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in params.items()}
    device = tensors[0].device
    for batch in batches:
        with autocast(device):
            loss, _ = causal_lm_loss(model, to_device(batch, device))
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for name, grad in zip(names, grads):
            if grad is not None:
                fisher[name] += grad.float().pow(2)
    model.train(was_training)
    return {n: f / max(1, len(batches)) for n, f in fisher.items()}


def build_ewc(model: Any, params: Mapping[str, torch.Tensor], examples: Sequence[Example], samples: int, seed: int,
              pad_id: int, weight: float) -> Ewc:
    """The EWC penalty around the model's current trainable values, Fisher from reference examples.

    Args:
        model: the model at the start of training (or of a stage).
        params: name -> trainable parameter.
        examples: the encoded reference examples.
        samples: how many to use (all when there are fewer), drawn by `seed`.
        seed: the run's seed.
        pad_id: padding id (each example is its own padded batch).
        weight: lambda.

    Returns:
        The `Ewc`.

    Raises:
        UserError: no reference example.
    """
    if not examples:
        raise UserError("no usable EWC reference example (empty, or every row too long or without an answer)",
                        hint="point train.ewc.reference at prepared JSONL, or raise train.max_len")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), min(samples, len(examples))))
    fisher = fisher_diagonal(model, params, [collate_padded([examples[i]], pad_id) for i in chosen])
    anchor = {n: p.detach().clone() for n, p in params.items()}
    return Ewc(fisher, anchor, weight)


# ------------------------------------------------------------------------------------------ curriculum

def metadata_ranks(records: Sequence[dict[str, Any]], by: str, order: Sequence[Any]) -> tuple[list[int], Counter[str]]:
    """Each record's curriculum bucket: the position of its `by` value in `order`.

    Args:
        records: prepared records.
        by: a dotted path into the record, e.g. "metadata.difficulty".
        order: the values in training order (compared as text, so 1 matches "1").

    Returns:
        `(ranks, odd)`: a rank per record, `len(order)` (last) for records without the field or
        with a value not in `order`; `odd` counts those as `missing_field` and `unlisted_value`.

    Example:
        >>> metadata_ranks([{"metadata": {"d": "hard"}}, {}], "metadata.d", ["easy", "hard"])
        ([1, 2], Counter({'missing_field': 1}))
    """
    position = {str(value): i for i, value in enumerate(order)}
    ranks: list[int] = []
    odd: Counter[str] = Counter()
    for record in records:
        value = _lookup(record, by)
        if value is None:
            odd[MISSING] += 1
        elif str(value) not in position:
            odd[OTHER] += 1
        ranks.append(position.get(str(value), len(order)) if value is not None else len(order))
    return ranks, odd


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def length_ranks(lengths: Sequence[int], n_buckets: int) -> list[int]:
    """Equal-size buckets by length, shortest first (ties by position).

    Example:
        >>> length_ranks([50, 10, 30, 20], 2)
        [1, 0, 1, 0]
    """
    ranks = [0] * len(lengths)
    for place, i in enumerate(sorted(range(len(lengths)), key=lambda i: (lengths[i], i))):
        ranks[i] = place * n_buckets // max(1, len(lengths))
    return ranks
