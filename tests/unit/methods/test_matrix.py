"""Every CPU method x every tiny architecture: apply, train, save, load, merge (peft's test_custom_models habit).

Each combination checks, on a fixed tiny batch:
  apply -> 3 AdamW steps lower the loss -> only the method's own parameters changed (the frozen base
  is bit-identical) -> save -> load onto a fresh base gives identical logits -> merge (where the
  method can be merged) gives the same logits as the unmerged model -> the trainable report adds up.
Combinations an architecture cannot support assert the clear UserError instead of being skipped.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from domaintune.config import (AdapterOptions, DistillOptions, FreezeOptions, FullOptions, IA3Options, LoraOptions,
                               PrefixOptions, PromptOptions)
from domaintune.errors import UserError
from domaintune.methods.base import REGISTRY, all_methods, get_method, saved_method, trainable_report
from domaintune.models.load import load_model

FAMILIES = ("tiny_llama", "tiny_qwen2", "tiny_deepseek_v3")
OPTIONS = {
    "lora": LoraOptions(r=4),
    "prefix": PrefixOptions(num_virtual_tokens=4),
    "prompt": PromptOptions(num_virtual_tokens=4, init_text="The patient reported"),
    "ia3": IA3Options(),
    "adapter": AdapterOptions(bottleneck=8),
    "full": FullOptions(),
    "freeze": FreezeOptions(train_top=1),
    # The student side of distillation (the teacher only enters the loss: tests/unit/train/test_distill.py).
    "distill": DistillOptions(teacher="unused", r=4),
}
# Where the method's own parameters live: every trainable name has the marker, every name with it trains.
MARKERS = {"lora": "lora_", "prefix": "prompt_encoder", "prompt": "prompt_encoder", "ia3": "ia3_l",
           "adapter": "_adapter.", "distill": "lora_"}
MERGEABLE = {"lora", "ia3", "full", "freeze", "distill"}
# A distilled student is saved as what it is (a LoRA adapter), so export and serve need no special case.
SAVED_AS = {"distill": "lora"}
# DeepSeek-V3's MLA caches a compressed latent, not per-head keys/values: see methods/prefix.py.
UNSUPPORTED = {("prefix", "tiny_deepseek_v3"): "MLA"}


def test_matrix_covers_every_registered_cpu_method():
    assert set(all_methods()) == set(REGISTRY)
    assert set(REGISTRY) - {"qlora"} == set(OPTIONS)


def _batch(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, model.config.vocab_size, (2, 16), generator=generator)


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch, labels=batch).loss.item()


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch).logits


def _train(model, batch, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()


def _check_changes(model, before: dict[str, torch.Tensor], name: str) -> None:
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[pname]), f"{pname} trains but did not change"
        else:
            assert torch.equal(param, before[pname]), f"frozen {pname} changed"
        if name in MARKERS:
            assert param.requires_grad == (MARKERS[name] in pname), pname


def _check_report(model, name: str, base_total: int) -> None:
    report = trainable_report(model)
    assert 0 < report.share <= 100
    if name == "full":
        assert report.trainable == report.total == base_total
    elif name == "freeze":
        assert report.total == base_total and report.trainable < base_total
    else:  # every trained parameter is new, the base is frozen
        assert report.trainable == report.total - base_total


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_method_roundtrip(name, family, request, tmp_path):
    path = request.getfixturevalue(family)
    method = get_method(name)
    torch.manual_seed(0)
    if (name, family) in UNSUPPORTED:
        with pytest.raises(UserError, match=UNSUPPORTED[name, family]):
            method.apply(load_model(path), OPTIONS[name], tokenizer_path=path)
        return
    base_total = trainable_report(load_model(path)).total
    model = method.apply(load_model(path), OPTIONS[name], tokenizer_path=path)
    batch = _batch(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    start = _loss(model, batch)
    _train(model, batch)
    assert _loss(model, batch) < start
    _check_changes(model, before, name)
    _check_report(model, name, base_total)

    logits = _logits(model, batch)
    method.save(model, tmp_path)
    assert saved_method(tmp_path) == SAVED_AS.get(name, name)
    loaded = method.load(load_model(path), tmp_path)
    torch.testing.assert_close(_logits(loaded, batch), logits, atol=1e-6, rtol=0)

    merged = method.merge(model)
    if name not in MERGEABLE:
        assert merged is None
        return
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), logits, atol=1e-4, rtol=0)
