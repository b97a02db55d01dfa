"""Tests for serve/adapters.py: names pick the right weights; LoRA adapters share one base."""

from __future__ import annotations

import json

import pytest
import torch

from domaintune.config.methods import IA3Options
from domaintune.errors import UserError
from domaintune.methods.base import get_method
from domaintune.models.load import load_model
from domaintune.serve.adapters import (artifact_folder, check_name, default_base_name, load_served,
                                       sampling_defaults)

IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_names_route_to_the_base_and_to_each_adapter(served, tiny_llama, lora_runs):
    from peft import PeftModel

    assert served.names == ["tiny", "tuned", "other"]
    base = load_model(tiny_llama).eval()
    with served.activate("tiny") as model:
        assert torch.allclose(logits(model), logits(base), atol=1e-6)  # adapters disabled
    for name, run in lora_runs.items():
        alone = PeftModel.from_pretrained(load_model(tiny_llama), str(run / "adapter")).eval()
        with served.activate(name) as model:
            got = logits(model)
        assert torch.allclose(got, logits(alone), atol=1e-5), name  # stacking changes nothing
        assert not torch.allclose(got, logits(base), atol=1e-3)
    # Only one copy of the base weights is held for the base and both LoRA adapters.
    assert len({id(route.model) for route in served.routes.values()}) == 1


def make_ia3(base_dir, out):
    method = get_method("ia3")
    model = method.apply(load_model(base_dir), IA3Options())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_" in name:
                param.uniform_(0.2, 2.0)
    method.save(model, out / "adapter")
    return out


def test_other_methods_get_their_own_copy(tiny_llama, lora_runs, tmp_path):
    ia3_run = make_ia3(tiny_llama, tmp_path / "ia3_run")
    served = load_served(str(tiny_llama), {"tuned": lora_runs["tuned"], "scaled": ia3_run}, template="chatml")
    assert served.names == [default_base_name(tiny_llama), "tuned", "scaled"]
    expected = get_method("ia3").load(load_model(tiny_llama), ia3_run / "adapter").eval()
    with served.activate("scaled") as model:
        assert torch.allclose(logits(model), logits(expected), atol=1e-6)
    with served.activate(served.base_name) as model:
        assert torch.allclose(logits(model), logits(load_model(tiny_llama)), atol=1e-6)
    assert served.routes["scaled"].model is not served.routes["tuned"].model


def test_artifact_folder_accepts_run_artifact_and_peft_folders(lora_runs, tmp_path):
    run = lora_runs["tuned"]
    assert artifact_folder(run) == run / "adapter" == artifact_folder(run / "adapter")
    peft_only = tmp_path / "exported"
    peft_only.mkdir()
    (peft_only / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert artifact_folder(peft_only) == peft_only
    with pytest.raises(UserError, match="no trained adapter"):
        artifact_folder(tmp_path / "missing")


@pytest.mark.parametrize("name", ["a/b", "../x", "", "x" * 65, "-lead", "sp ace"])
def test_bad_names_are_refused(name):
    with pytest.raises(UserError):
        check_name(name)


def test_an_adapter_named_like_the_base_is_refused_before_loading(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="like the base model"):
        load_served(str(tiny_llama), {"base": tmp_path / "never-read"}, base_name="base")


def test_default_base_names():
    assert default_base_name("embedded") == "embedded"
    assert default_base_name("/models/My Model.gguf") == "My-Model"
    assert default_base_name("/models/qwen2.5-0.5b/") == "qwen2.5-0.5b"


def test_sampling_defaults_follow_a_shipped_generation_config(tiny_llama):
    from transformers import GenerationConfig

    model = load_model(tiny_llama)
    assert sampling_defaults(model) == (1.0, 1.0)  # derived from config.json: OpenAI's defaults
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9)
    assert sampling_defaults(model) == (0.6, 0.9)
    model.generation_config = GenerationConfig(do_sample=False)
    assert sampling_defaults(model) == (0.0, 1.0)


def test_auto_serves_with_the_template_the_runs_recorded(tiny_llama, lora_runs, tmp_path):
    import shutil

    from domaintune.serve.adapters import serving_template

    runs = {}
    for name, template in (("a", "chatml"), ("b", "deepseek_llm")):
        runs[name] = tmp_path / name
        shutil.copytree(lora_runs["tuned"], runs[name])
        (runs[name] / "recipe.resolved.yaml").write_text(f"model:\n  name: {tiny_llama}\n  template: {template}\n")
    assert serving_template("auto", [runs["a"]]) == serving_template("auto", [runs["a"] / "adapter"]) == "chatml"
    assert serving_template("deepseek_llm", [runs["a"]]) == "deepseek_llm"  # asked for: wins
    assert serving_template("auto", [lora_runs["tuned"]]) == "auto"  # nothing recorded: the tokenizer's
    with pytest.raises(UserError, match="different chat templates"):
        serving_template("auto", runs.values())
    assert load_served(str(tiny_llama), {"a": runs["a"]}).template.name == "chatml"
