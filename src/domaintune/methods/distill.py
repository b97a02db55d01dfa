"""Distillation's student: a LoRA or fully fine-tuned model, trained against a teacher.

    method: distill
    teacher: path/to/teacher      # same tokenizer as the student
    temperature: 2.0
    kd_weight: 0.5                # loss = kd_weight·T²·KL + (1 - kd_weight)·CE
    student: lora                 # or full
    r: 16
    alpha: 32

This method only prepares the student: `apply`, `save`, `load` and `merge` hand over to the
`lora` or `full` method, so a distilled run saves a plain PEFT adapter or a plain model folder
whose `method.json` names "lora" or "full", and export and serve need to know nothing about
distillation. The teacher and the loss live in `train/distill.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domaintune.config import DistillOptions, FullOptions, LoraOptions
from domaintune.methods.base import Method, get_method, register, saved_method


class Distill:
    """Train the student with LoRA or fully; delegate everything to that method."""

    name = "distill"

    def apply(self, model: nn.Module, opts: DistillOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        method, student_opts = student_method(opts)
        return method.apply(model, student_opts, tokenizer_path=tokenizer_path)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _method_of(model).save(model, out_dir)

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        return get_method(saved_method(out_dir)).load(base_model, out_dir)

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold a LoRA student into its base, or return a full student as it is."""
        return _method_of(model).merge(model)


def student_method(opts: DistillOptions) -> tuple[Method, Any]:
    """The method that trains the student and its options, from the distill options.

    Example:
        >>> student_method(DistillOptions(teacher="t", student="full"))[0].name
        'full'
    """
    if opts.student == "full":
        return get_method("full"), FullOptions()
    targets = opts.target_modules or "all-linear"  # None: every linear layer, as LoRA's own default
    # Every layer, as before LoRA's default became the top third: the distillation recipes were
    # measured that way, and the teacher must see its own embeddings (train/frozen.py caches none here).
    return get_method("lora"), LoraOptions(r=opts.r, alpha=opts.alpha, dropout=opts.dropout, target_modules=targets,
                                           layers="all")


def _method_of(model: nn.Module) -> Method:
    # A peft-wrapped model is a LoRA student; anything else was trained fully.
    return get_method("lora" if hasattr(model, "peft_config") else "full")


register(Distill())
