"""Knowledge distillation: the student learns the teacher's softened next-token distribution.

`method: distill` trains a student (LoRA or full, see `methods/distill.py`) with

    loss = kd_weight * T² * KL(teacher_T || student_T) + (1 - kd_weight) * CE

per supervised token, where `p_T = softmax(logits / T)` and CE is the usual next-token
cross-entropy on the labels (at T = 1). The T² factor keeps the KD gradients' scale independent
of T (Hinton et al., 2015). Both models see the same packed or padded batch and both project
only the supervised positions through their LM heads (`loss.supervised_logits`), so the teacher
costs one forward pass without the `[B, T, V]` logits. The result is averaged exactly like
`causal_lm_loss` (`loss.supervised_mean`: the mean, or the term-weighted mean), so the training
loop treats it as a drop-in replacement:

    teacher = load_teacher("path/to/teacher", student_tokenizer=tokenizer)
    run_training(..., loss_fn=make_distill_loss(teacher, temperature=2.0, kd_weight=0.5))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.errors import UserError
from domaintune.models.loss import add_router_loss, supervised_logits, supervised_mean

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], tuple[torch.Tensor, int]]


def load_teacher(spec: str | os.PathLike[str], dtype: torch.dtype = torch.float32, *,
                 student_tokenizer: Any) -> Any:
    """Load a frozen teacher model and check that it speaks the student's vocabulary.

    Args:
        spec: a model spec, as in `domaintune.models.load.resolve_model`.
        dtype: the teacher's parameter dtype (bf16 halves its memory on GPU).
        student_tokenizer: the student's tokenizer; the teacher's must map every token to the
            same id, or the two distributions would be over different things.

    Returns:
        The teacher, in eval mode with `requires_grad` off.

    Raises:
        UserError: the spec names no usable model, or the teacher's vocabulary differs from the
            student's (checked before the weights are loaded).

    Example:
        >>> teacher = load_teacher("models/qwen2.5-7b", student_tokenizer=tok)   # doctest: +SKIP
    """
    from domaintune.models.load import load_model, load_tokenizer

    check_vocab(load_tokenizer(spec), student_tokenizer, str(spec))
    teacher = load_model(spec, dtype=dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_vocab(teacher_tokenizer: Any, student_tokenizer: Any, teacher_name: str = "teacher") -> None:
    """Raise a UserError unless both tokenizers map the same tokens to the same ids.

    LM heads may still differ in width (Qwen2.5 sizes pad their embeddings differently);
    `distill_loss` compares the distributions over the shared ids.

    Raises:
        UserError: some token is missing from one vocabulary or has another id.
    """
    teacher, student = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    differ = sum(teacher.get(token) != i for token, i in student.items()) + len(teacher.keys() - student.keys())
    if differ:
        raise UserError(f"teacher '{teacher_name}' has another vocabulary than the student "
                        f"({differ} of {max(len(teacher), len(student))} tokens differ)",
                        hint="distill from a teacher of the student's model family, which shares its tokenizer")


def distill_loss(model: Any, batch: Mapping[str, torch.Tensor], *, teacher: Any, temperature: float,
                 kd_weight: float) -> tuple[torch.Tensor, int]:
    """The distillation loss of a batch, with `causal_lm_loss`'s contract.

    Per supervised token, `kd_weight * T² * KL(teacher_T || student_T) + (1 - kd_weight) * CE`,
    averaged over supervised tokens (weighted by `loss_weights` when the batch has them);
    the student's router `aux_loss` is added as in `causal_lm_loss`. The teacher runs under
    `torch.no_grad`; when the two LM heads differ in width (padding rows), KL is taken over
    the shared first ids. `kd_weight=0` gives exactly `causal_lm_loss`.

    Args:
        model: the student (a causal LM or a peft model around one), in train mode.
        batch: a packed or padded batch, as `causal_lm_loss` takes.
        teacher: the frozen teacher (`load_teacher`), on the batch's device.
        temperature: the softening temperature T (> 0).
        kd_weight: the share of the KD term, in [0, 1].

    Returns:
        `(loss, count)`: the mean loss (a scalar with a graph into the student only) and the
        number of supervised targets.

    Raises:
        UserError: temperature or kd_weight out of range.

    Example:
        >>> loss, n = distill_loss(student, batch, teacher=teacher, temperature=2.0, kd_weight=0.5)  # doctest: +SKIP
    """
    _check_settings(temperature, kd_weight)
    logits, targets, out = supervised_logits(model, batch)
    with torch.no_grad():
        teacher_logits = supervised_logits(teacher, batch)[0]
    student = logits.float()
    ce = F.cross_entropy(student, targets, reduction="none")
    kl = _kl_per_token(student, teacher_logits.float(), temperature)
    per_token = kd_weight * temperature ** 2 * kl + (1.0 - kd_weight) * ce
    return add_router_loss(model, out, supervised_mean(per_token, batch, logits)), int(ce.numel())


def make_distill_loss(teacher: Any, temperature: float = 2.0, kd_weight: float = 0.5) -> LossFn:
    """A `loss_fn(model, batch)` for the training loop's `loss_fn` hook.

    The teacher is moved to the batch's device on first use (and whenever the device changes).

    Args:
        teacher: the frozen teacher (`load_teacher`).
        temperature, kd_weight: as in `distill_loss`.

    Returns:
        A function with `causal_lm_loss`'s signature and contract.

    Raises:
        UserError: temperature or kd_weight out of range (checked now, not at the first step).

    Example:
        >>> loss_fn = make_distill_loss(teacher, temperature=2.0, kd_weight=0.5)   # doctest: +SKIP
        >>> loss, n = loss_fn(model, batch)                                        # doctest: +SKIP
    """
    _check_settings(temperature, kd_weight)

    def loss_fn(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        device = batch["input_ids"].device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        return distill_loss(model, batch, teacher=teacher, temperature=temperature, kd_weight=kd_weight)

    return loss_fn


def _kl_per_token(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) of each row, over the ids both heads have."""
    width = min(student.shape[-1], teacher.shape[-1])
    log_p_student = F.log_softmax(student[:, :width] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher[:, :width] / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)


def _check_settings(temperature: float, kd_weight: float) -> None:
    if not temperature > 0:
        raise UserError(f"distillation temperature must be > 0, got {temperature}", hint="use e.g. temperature: 2.0")
    if not 0.0 <= kd_weight <= 1.0:
        raise UserError(f"kd_weight must be between 0 and 1, got {kd_weight}", hint="use e.g. kd_weight: 0.5")
