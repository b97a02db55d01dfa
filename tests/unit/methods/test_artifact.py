"""Tests for domaintune.methods.artifact: finding and reloading what training saved."""

from __future__ import annotations

import pytest
import torch

from domaintune.config import FullOptions, LoraOptions
from domaintune.errors import UserError
from domaintune.methods import get_method
from domaintune.methods.artifact import find_artifact, load_artifact
from domaintune.models.load import load_model


def _logits(model, ids=(1, 5, 9, 12)):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def _trained_lora(tiny_llama, run_dir):
    method = get_method("lora")
    model = method.apply(load_model(tiny_llama), LoraOptions(r=4, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    method.save(model, run_dir / "adapter")
    (run_dir / "recipe.resolved.yaml").write_text(f"model:\n  name: {tiny_llama}\n  template: chatml\n")
    return model.eval()


def test_run_folder_adapter_reloads_to_the_same_logits(tiny_llama, tmp_path):
    trained = _trained_lora(tiny_llama, tmp_path)
    art = find_artifact(tmp_path)
    assert (art.kind, art.method, art.base, art.template) == ("adapter", "lora", str(tiny_llama), "chatml")
    assert art.folder == tmp_path / "adapter" and art.run_dir == tmp_path
    assert torch.allclose(_logits(load_artifact(art)), _logits(trained), atol=1e-6)
    # pointing at adapter/ itself finds the same run
    assert find_artifact(tmp_path / "adapter").run_dir == tmp_path


def test_lone_adapter_needs_a_base(tiny_llama, tmp_path):
    _trained_lora(tiny_llama, tmp_path / "run")
    lone = tmp_path / "copy"
    (tmp_path / "run" / "adapter").rename(lone)
    art = find_artifact(lone)
    assert art.base is None and art.run_dir is None
    with pytest.raises(UserError, match="--model"):
        load_artifact(art)
    assert load_artifact(art, base=str(tiny_llama)) is not None


def test_full_model_loads_without_base(tiny_llama, tmp_path):
    method = get_method("full")
    model = method.apply(load_model(tiny_llama), FullOptions())
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    method.save(model, tmp_path / "model")
    art = find_artifact(tmp_path)
    assert art.kind == "model"
    assert torch.allclose(_logits(load_artifact(art)), _logits(model.eval()), atol=1e-6)


def test_folder_without_weights_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trained adapter"):
        find_artifact(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        find_artifact(tmp_path / "missing")
