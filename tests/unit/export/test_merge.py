"""hf export: plain transformers reads the merged folder and computes base+adapter's logits."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from domaintune.export.chat_formats import jinja_template
from domaintune.export.merge import export_hf
from domaintune.export.source import load_tuned, open_run
from domaintune.models.templates import get_template

IDS = torch.arange(3, 60).unsqueeze(0)


def _logits(model):
    with torch.inference_mode():
        return model(input_ids=IDS).logits


def test_plain_transformers_gets_base_plus_adapter_logits(lora_run, merged_llama, tiny_tokenizer, tmp_path):
    jinja = jinja_template(get_template("chatml"))
    stops = [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    files = {p.name for p in export_hf(merged_llama, tiny_tokenizer, jinja, stops, tmp_path)}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(_logits(loaded), _logits(load_tuned(open_run(lora_run))), atol=1e-4, rtol=0)


def test_chat_template_and_stops_travel_with_the_folder(merged_llama, tiny_tokenizer, tmp_path):
    jinja = jinja_template(get_template("deepseek_v3"))  # not the tokenizer's own: the export must carry it
    own = tiny_tokenizer.chat_template
    export_hf(merged_llama, tiny_tokenizer, jinja, [7, 8], tmp_path)
    assert tiny_tokenizer.chat_template == own  # the caller's tokenizer is not changed
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == jinja
    assert AutoTokenizer.from_pretrained(str(tmp_path)).chat_template == jinja
    config = GenerationConfig.from_pretrained(str(tmp_path))
    assert config.eos_token_id == [7, 8] and config.do_sample is False
