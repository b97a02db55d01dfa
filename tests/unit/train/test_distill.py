"""Tests for train/distill.py: the KD loss's formula, contract, gradients and packing equivalence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from domaintune.errors import UserError
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template
from domaintune.models.batch import IGNORE_INDEX, TermWeighter, collate_packed, collate_padded, encode_record
from domaintune.train.distill import check_vocab, distill_loss, load_teacher, make_distill_loss
from domaintune.models.loss import causal_lm_loss, next_token_targets

# Two chat records (one multi-turn, with Chinese) and one plain text record.
RECORDS = [json.loads(line) for line in (Path(__file__).parents[2] / "assets" / "mixed_records.jsonl").open(encoding="utf-8")]


@pytest.fixture
def examples(tiny_tokenizer):
    weighter = TermWeighter(["capital of France", "北京", "headache"], 3.0)
    return [encode_record(r, tiny_tokenizer, get_template("chatml"), 256, term_weighter=weighter).example
            for r in RECORDS]


@pytest.fixture
def student_tokenizer(tiny_llama):
    """The tokenizer saved with the tiny models (as the API loads it for the student)."""
    return load_tokenizer(tiny_llama)


@pytest.fixture
def teacher(tiny_deepseek_v3, student_tokenizer):
    """Another architecture (MoE) with the same tokenizer: a teacher whose distribution differs."""
    return load_teacher(tiny_deepseek_v3, student_tokenizer=student_tokenizer)


def unweighted(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "loss_weights"}


def reference(student, teacher, batch, temperature: float, kd_weight: float) -> torch.Tensor:
    """The loss from full [B, T, V] logits, written out from the formula."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    s, t = student(**inputs, use_cache=False).logits[keep], teacher(**inputs, use_cache=False).logits[keep]
    p_t = F.softmax(t / temperature, -1)
    kl = (p_t * (F.log_softmax(t / temperature, -1) - F.log_softmax(s / temperature, -1))).sum(-1)
    per_token = kd_weight * temperature ** 2 * kl + (1 - kd_weight) * F.cross_entropy(s, targets[keep], reduction="none")
    w = torch.cat([batch["loss_weights"][:, 1:], torch.zeros_like(batch["loss_weights"][:, :1])], 1)[keep]
    return (per_token * w).sum() / w.sum()


@pytest.mark.parametrize("collate", ["packed", "padded"])
def test_loss_follows_the_formula(collate, tiny_llama, teacher, examples, tiny_tokenizer):
    student = load_model(tiny_llama).eval()
    batch = collate_packed(examples) if collate == "packed" else collate_padded(examples, tiny_tokenizer.pad_token_id)
    assert "loss_weights" in batch
    loss, count = distill_loss(student, batch, teacher=teacher, temperature=2.0, kd_weight=0.7)
    assert count == causal_lm_loss(student, batch)[1]
    with torch.no_grad():
        expected = reference(student, teacher, batch, 2.0, 0.7)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_kd_term_is_zero_when_the_teacher_is_the_student(tiny_llama, student_tokenizer, tiny_tokenizer, examples):
    student, teacher = load_model(tiny_llama), load_teacher(tiny_llama, student_tokenizer=student_tokenizer)
    for batch in (collate_packed(examples), collate_padded(examples, tiny_tokenizer.pad_token_id)):
        loss, _ = distill_loss(student, batch, teacher=teacher, temperature=3.0, kd_weight=1.0)
        assert abs(loss.item()) < 1e-6
        half, _ = distill_loss(student, batch, teacher=teacher, temperature=3.0, kd_weight=0.5)
        torch.testing.assert_close(half, 0.5 * causal_lm_loss(student, batch)[0], atol=1e-6, rtol=0)


def test_kd_weight_zero_is_exactly_the_causal_lm_loss(tiny_llama, teacher, examples, tiny_tokenizer):
    student = load_model(tiny_llama)
    for batch in (collate_packed(examples), unweighted(collate_padded(examples, tiny_tokenizer.pad_token_id))):
        loss, count = distill_loss(student, batch, teacher=teacher, temperature=2.0, kd_weight=0.0)
        assert torch.equal(loss, causal_lm_loss(student, batch)[0]) and count == causal_lm_loss(student, batch)[1]


def test_gradient_flows_only_into_the_students_trainable_parameters(tiny_llama, teacher, examples):
    from peft import LoraConfig, get_peft_model

    student = get_peft_model(load_model(tiny_llama), LoraConfig(r=4, target_modules="all-linear",
                                                                init_lora_weights=False))
    loss, _ = distill_loss(student, collate_packed(examples), teacher=teacher, temperature=2.0, kd_weight=0.5)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, param in student.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_training_a_few_steps_lowers_the_loss(tiny_llama, teacher, examples):
    student = load_model(tiny_llama).train()
    loss_fn = make_distill_loss(teacher, temperature=2.0, kd_weight=0.5)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.0)
    batch = collate_packed(examples)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, _ = loss_fn(student, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("weights", [False, True])
def test_packed_equals_per_conversation(weights, tiny_llama, teacher, examples):
    """Packed KD loss == the pooled mean of the conversations' KD losses (see test_packing_equivalence)."""
    student = load_model(tiny_llama).eval()
    exs = examples if weights else [type(ex)(ex.input_ids, ex.labels) for ex in examples]
    kwargs = {"teacher": teacher, "temperature": 2.0, "kd_weight": 0.6}
    with torch.no_grad():
        packed, total = distill_loss(student, collate_packed(exs), **kwargs)
        sums, norms = [], []
        for ex in exs:
            loss, n = distill_loss(student, collate_packed([ex]), **kwargs)
            trained = torch.tensor(ex.labels[1:]) != IGNORE_INDEX
            norm = torch.tensor(ex.weights[1:])[trained].sum() if ex.weights else torch.tensor(float(n))
            sums.append(loss * norm)
            norms.append(norm)
    assert total == sum(sum(label != IGNORE_INDEX for label in ex.labels) for ex in exs)
    torch.testing.assert_close(packed, sum(sums) / sum(norms), atol=1e-4, rtol=0)


def test_a_wider_teacher_head_is_compared_over_the_shared_ids(tiny_llama, student_tokenizer, examples):
    student = load_model(tiny_llama).eval()
    teacher = load_teacher(tiny_llama, student_tokenizer=student_tokenizer)
    teacher.resize_token_embeddings(student.config.vocab_size + 8)  # padding rows, as Qwen2.5 sizes differ
    batch = collate_packed(examples)
    loss, _ = distill_loss(student, batch, teacher=teacher, temperature=2.0, kd_weight=1.0)
    assert abs(loss.item()) < 1e-6  # same weights on the shared ids: the padding rows are ignored


class FakeTokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)



def test_a_teacher_with_another_vocabulary_is_refused(tiny_qwen2, student_tokenizer):
    # transformers gives the Qwen2 folder's tokenizer an extra "<|endoftext|>": one token more.
    with pytest.raises(UserError, match=r"another vocabulary than the student \(1 of 513 tokens differ\)") as err:
        load_teacher(tiny_qwen2, student_tokenizer=student_tokenizer)
    assert "fix:" in str(err.value)
    vocab = student_tokenizer.get_vocab()
    a, b = sorted(vocab)[:2]
    swapped = {**vocab, a: vocab[b], b: vocab[a]}  # the same tokens, two ids exchanged
    with pytest.raises(UserError, match="2 of 512"):
        check_vocab(FakeTokenizer(swapped), student_tokenizer)
    check_vocab(FakeTokenizer(vocab), student_tokenizer)  # the same mapping passes


def test_the_teacher_is_frozen_and_in_eval_mode(teacher):
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(("temperature", "kd_weight", "match"), [(0.0, 0.5, "temperature"),
                                                                  (2.0, 1.5, "kd_weight"),
                                                                  (2.0, -0.1, "kd_weight")])
def test_bad_settings_are_user_errors(temperature, kd_weight, match, teacher):
    with pytest.raises(UserError, match=match):
        make_distill_loss(teacher, temperature, kd_weight)
