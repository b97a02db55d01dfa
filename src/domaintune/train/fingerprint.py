"""What a resumed run must find unchanged to continue bit for bit: the run's fingerprint.

A checkpoint records the fingerprint of the run that saved it; `--resume` compares it with the
run being resumed and refuses any difference, naming the field, unless `--force`:

    train_data, val_data  sha256 of the prepared files (a re-`prepare` into the same folder)
    tokens                sha256 of the encoded training examples (another tokenizer or template)
    base_weights          sha256 of the base model's safetensors files (another base)
    total_steps           the planned optimizer steps (the learning-rate schedule follows them)
    threads               torch's CPU threads (float sums are ordered by them)

The recipe itself is compared by `resume_checks.check_resume_recipe`.

    >>> try:
    ...     check_fingerprint({"threads": 2}, {"threads": 4}, force=False)
    ... except UserError as err:
    ...     print(err.message)
    cannot resume: threads changed since the checkpoint (2 -> 4)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from domaintune.errors import UserError
from domaintune.models.batch import Example

log = logging.getLogger(__name__)
FINGERPRINT_KEY = "fingerprint"  # its key in a checkpoint's TrainState.extra


def tokens_sha256(examples: Sequence[Example]) -> str:
    """sha256 over every example's input ids and labels, in order."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(len(ex.input_ids).to_bytes(4, "little"))
        digest.update(torch.tensor(ex.input_ids, dtype=torch.int64).numpy().tobytes())
        digest.update(torch.tensor(ex.labels, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(train_ex: Sequence[Example], records: tuple[Any, Any], total_steps: int,
                    model_path: Path | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """The fields of the module docstring for this run (None where a field is unknown, e.g. a
    model given in memory without a folder); `records` are (train, val) `train.data.Split`s."""
    from domaintune.train.summary import weights_sha256

    files = weights_sha256(model_path, cache_dir) if model_path is not None else {}
    base = hashlib.sha256("".join(files.values()).encode()).hexdigest() if files else None
    return {"train_data": getattr(records[0], "sha256", None), "val_data": getattr(records[1], "sha256", None),
            "tokens": tokens_sha256(train_ex), "base_weights": base, "total_steps": total_steps,
            "threads": torch.get_num_threads()}


def check_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], force: bool) -> None:
    """Refuse to resume when a field of the saved fingerprint differs (fields either side lacks, or
    records as None, are not compared: checkpoints from before a field existed still resume).

    Raises:
        UserError: naming the first changed field, its old and new value, unless `force`.
    """
    changed = [(k, saved[k], v) for k, v in current.items()
               if saved and saved.get(k) is not None and v is not None and saved[k] != v]
    if not changed:
        return
    shown = "; ".join(f"{k} changed since the checkpoint ({_short(old)} -> {_short(new)})" for k, old, new in changed)
    if force:
        log.warning("resuming although %s (forced: the result will not match an uninterrupted run)", shown)
        return
    raise UserError(f"cannot resume: {shown}",
                    hint=f"resume with what the checkpoint was trained with, or pass --force to resume anyway "
                         f"(then {changed[0][0]} differs from an uninterrupted run)")


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 else text
