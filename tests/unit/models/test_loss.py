"""Tests for models/loss.py: the selected-position loss equals transformers' loss; weights; counts."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from domaintune.models.templates import get_template
from domaintune.models.batch import IGNORE_INDEX, collate_packed, collate_padded, encode_record
from domaintune.models.loss import causal_lm_loss, next_token_targets, packing_supported, token_counts

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"]
# Two chat records (one multi-turn, with Chinese) and one plain text record.
RECORDS = [json.loads(line) for line in (Path(__file__).parents[2] / "assets" / "mixed_records.jsonl").open(encoding="utf-8")]


def load(path, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)


def examples(tokenizer):
    template = get_template("chatml")
    return [encode_record(r, tokenizer, template, max_len=256).example for r in RECORDS]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_selected_position_loss_equals_transformers_loss(family, attn, tiny_tokenizer, request):
    model = load(request.getfixturevalue(family), attn)
    for ex in examples(tiny_tokenizer):
        batch = collate_packed([ex])  # a single example: no packing, plain causal attention
        loss, count = causal_lm_loss(model, batch)
        reference = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        assert count == token_counts(batch)[1] > 0
        torch.testing.assert_close(loss, reference, atol=1e-5, rtol=0)
    batch = collate_padded(examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(causal_lm_loss(model, batch)[0], model(**batch).loss, atol=1e-5, rtol=0)


def test_lm_head_sees_only_supervised_positions(tiny_llama, tiny_tokenizer):
    model = load(tiny_llama)
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape))
    batch = collate_packed(examples(tiny_tokenizer))
    _, count = causal_lm_loss(model, batch)
    assert rows == [torch.Size([count, model.config.hidden_size])]
    assert count < batch["input_ids"].shape[1] / 2  # most chat tokens are prompt


def peft_models(path):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    configs = {"lora": LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
               "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
               "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)}
    torch.manual_seed(0)
    return {name: get_peft_model(load(path), config) for name, config in configs.items()}


def test_peft_models_match_their_own_loss_and_train_the_adapter(tiny_llama, tiny_tokenizer):
    batch = collate_padded(examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    for name, model in peft_models(tiny_llama).items():
        loss, _ = causal_lm_loss(model, batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = model(**batch).loss
        torch.testing.assert_close(loss, reference, atol=1e-5, rtol=0, msg=name)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
        assert packing_supported(model) == (name == "lora")


def test_prompt_learning_refuses_a_packed_batch(tiny_llama, tiny_tokenizer):
    packed = collate_packed(examples(tiny_tokenizer))
    with pytest.raises(ValueError, match="collate_padded"):
        causal_lm_loss(peft_models(tiny_llama)["prefix"], packed)


def test_a_packed_batch_with_an_attention_mask_is_refused(tiny_llama, tiny_tokenizer):
    packed = collate_packed(examples(tiny_tokenizer))
    packed["attention_mask"] = torch.ones_like(packed["input_ids"])
    with pytest.raises(ValueError, match="attention_mask"):
        causal_lm_loss(load(tiny_llama), packed)


def per_token_ce(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-logit cross-entropy at every position, and the supervised-target mask."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    targets = next_token_targets(batch["labels"])
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE_INDEX)
    return ce, targets != IGNORE_INDEX


def test_weights_give_the_weighted_mean_over_supervised_tokens(tiny_qwen2, tiny_tokenizer):
    model = load(tiny_qwen2)
    batch = collate_padded(examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    weights = torch.rand(batch["labels"].shape, generator=torch.Generator().manual_seed(0)) * 3
    ce, keep = per_token_ce(model, batch)
    w = torch.cat([weights[:, 1:], torch.zeros_like(weights[:, :1])], dim=1)  # weight of the predicted token
    expected = (ce * w)[keep].sum() / w[keep].sum()
    loss, count = causal_lm_loss(model, {**batch, "loss_weights": weights})
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert count == int(keep.sum())  # still the supervised-token count, not a weight sum
    unsupervised = weights.masked_fill(batch["labels"] != IGNORE_INDEX, 0.0) * 100
    torch.testing.assert_close(causal_lm_loss(model, {**batch, "loss_weights": weights + unsupervised})[0],
                               expected, atol=1e-5, rtol=0)
    ones = torch.ones_like(weights)
    torch.testing.assert_close(causal_lm_loss(model, {**batch, "loss_weights": ones})[0],
                               causal_lm_loss(model, batch)[0], atol=1e-6, rtol=0)


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at every position are given: the loss can be worked out by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, use_cache, logits_to_keep, **_):
        return SimpleNamespace(logits=self.logits[logits_to_keep])


def test_weighted_loss_matches_a_hand_computation():
    # Vocabulary of 2. Position 0 predicts token 1 from logits (0, 0): ce = ln 2. Position 1
    # predicts token 0 from logits (ln 3, 0): p = 3/4, ce = ln(4/3). Position 2 is not trained.
    model = FixedLogits(torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]]))
    batch = {"input_ids": torch.tensor([[7, 1, 0]]), "labels": torch.tensor([[IGNORE_INDEX, 1, 0]]),
             "loss_weights": torch.tensor([[9.0, 1.0, 3.0]])}  # 9.0 sits on no target: unused
    loss, count = causal_lm_loss(model, batch)
    assert count == 2
    assert loss.item() == pytest.approx((1 * math.log(2) + 3 * math.log(4 / 3)) / (1 + 3), abs=1e-7)
    plain, _ = causal_lm_loss(model, {k: v for k, v in batch.items() if k != "loss_weights"})
    assert plain.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-7)


def test_token_counts_on_packed_and_padded_batches(tiny_tokenizer):
    exs = examples(tiny_tokenizer)
    supervised = sum(sum(label != IGNORE_INDEX for label in ex.labels) for ex in exs)
    lengths = sum(len(ex) for ex in exs)
    assert token_counts(collate_packed(exs)) == (lengths, supervised)
    assert token_counts(collate_padded(exs, tiny_tokenizer.pad_token_id)) == (lengths, supervised)


def test_a_batch_without_supervised_tokens_has_zero_loss_that_backpropagates(tiny_llama):
    model = load(tiny_llama)
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.full((1, 3), IGNORE_INDEX)}
    loss, count = causal_lm_loss(model, batch)
    loss.backward()
    assert count == 0 and loss.item() == 0.0 and model.lm_head.weight.grad is not None
