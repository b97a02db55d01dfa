"""adapter export: a PEFT folder peft (and vLLM) load onto the base, with what vLLM can serve stated."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from domaintune.errors import UserError
from domaintune.export.adapter import _facts, export_adapter
from domaintune.export.source import base_folder, load_tuned, open_run
from domaintune.models.load import load_model


def _logits(model):
    with torch.inference_mode():
        return model(input_ids=torch.arange(3, 50).unsqueeze(0)).logits


def test_plain_peft_loads_the_folder_with_the_same_logits(lora_run, tiny_tokenizer, tmp_path):
    run = open_run(lora_run)
    facts = export_adapter(run.artifact, run.method, base_folder(run), tiny_tokenizer, "JINJA", tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_folder(run))
    assert (facts.peft_type, facts.rank, facts.vllm_reason, facts.max_lora_rank) == ("LORA", 4, None, None)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == "JINJA"
    loaded = PeftModel.from_pretrained(load_model(config["base_model_name_or_path"]), str(tmp_path)).eval()
    assert torch.equal(_logits(loaded), _logits(load_tuned(run)))


@pytest.mark.parametrize("config, reason, rank", [
    ({"peft_type": "LORA", "r": 64}, None, 64),
    ({"peft_type": "LORA", "r": 17}, None, 32),
    ({"peft_type": "LORA", "r": 8, "use_dora": True}, "DoRA", None),
    ({"peft_type": "IA3"}, "LoRA adapters only", None),
    ({"peft_type": "LORA", "r": 1024}, "above vLLM's largest", None),
])
def test_vllm_limits(config, reason, rank):
    facts = _facts(config, "/base")
    assert (facts.vllm_reason is None) == (reason is None)
    assert reason is None or reason in facts.vllm_reason
    assert facts.max_lora_rank == rank


def test_full_weights_have_no_adapter_folder(run_factory, tiny_llama, tmp_path):
    run = open_run(run_factory(tiny_llama, "full"))
    with pytest.raises(UserError, match="saved no PEFT adapter") as err:
        export_adapter(run.artifact, run.method, base_folder(run), None, "", tmp_path)
    assert "--format hf" in err.value.hint
