"""GGUF round trip through transformers' own GGUF reader: weights, q/k permutation, tokenizer, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, DeepseekV3Config, LlamaConfig
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from domaintune.errors import UserError
from domaintune.export.chat_formats import jinja_template
from domaintune.export.gguf import check_gguf_support, load_gguf_model, permute_qk, pre_tokenizer_name, write_gguf
from domaintune.models.load import load_model, load_tokenizer
from domaintune.models.templates import get_template

TEXTS = ["Hello there, how are you today? I am fine, thank you for asking.",
         "The quick brown fox jumps over the lazy dog near the river bank.",
         "Machine learning models learn patterns from data and make predictions on new inputs.",
         "你好，世界。今天天气很好，我们去公园散步吧。",
         "  two  spaces, digits 12345 and\ttabs\n",
         "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"]
JINJA = jinja_template(get_template("chatml"))


def _ids(tokenizer) -> torch.Tensor:
    return torch.tensor([sum((tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS), [])])


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


def _write(model, tokenizer, tmp_path, quant):
    path = tmp_path / "model.gguf"
    facts = write_gguf(model, tokenizer, JINJA, [tokenizer.convert_tokens_to_ids("<|im_end|>")], path, quant)
    return path, facts


@settings(max_examples=40, deadline=None)
@given(kv=st.integers(1, 4), groups=st.integers(1, 3), half=st.integers(1, 4), cols=st.integers(1, 3))
def test_permutation_is_undone_by_transformers_reader(kv, groups, half, cols):
    heads = kv * groups
    weights = np.random.default_rng(0).normal(size=(heads * 2 * half, cols)).astype(np.float32)
    reader = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": heads})
    assert np.array_equal(reader._reverse_permute_weights(permute_qk(weights, heads, heads), heads, heads), weights)
    k = weights[: kv * 2 * half]
    assert np.array_equal(reader._reverse_permute_weights(permute_qk(k, heads, kv), heads, kv), k)


def test_f16_llama_round_trip_matches_merged_logits(merged_llama, tiny_tokenizer, tmp_path):
    path, facts = _write(merged_llama, tiny_tokenizer, tmp_path, "f16")
    ids = _ids(tiny_tokenizer)
    diff = (_logits(load_gguf_model(path), ids) - _logits(merged_llama, ids)).abs().max().item()
    assert diff < 1e-2  # measured 2.9e-3: f16 rounding of the weights only
    assert (facts.architecture, facts.tensors, facts.quantized) == ("llama", 21, 0)


def test_q8_0_keeps_top1_on_sample_positions(merged_llama, tiny_tokenizer, tmp_path):
    path, facts = _write(merged_llama, tiny_tokenizer, tmp_path, "q8_0")
    ids = _ids(tiny_tokenizer)
    ref, got = _logits(merged_llama, ids), _logits(load_gguf_model(path), ids)
    # A random tiny model has near-ties everywhere (logit std 0.12), so rounding flips a few; measured 94.6%
    # over 185 positions. A wrong permutation or tensor name scrambles the logits far below this.
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    assert facts.quantized == 16 and facts.kept_f16 == 0  # 2 layers x 7 matrices + embeddings + head
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.1.ffn_down.weight"] == "Q8_0" and types["blk.1.ffn_norm.weight"] == "F32"


def test_qwen2_tied_embeddings_round_trip(tiny_qwen2, tmp_path):
    model, tokenizer = load_model(tiny_qwen2).eval(), load_tokenizer(tiny_qwen2)
    path, facts = _write(model, tokenizer, tmp_path, "f16")
    names = {t.name for t in GGUFReader(str(path)).tensors}
    assert "output.weight" not in names and "blk.0.attn_q.bias" in names  # tied head; Qwen2's qkv biases kept
    ids = _ids(tokenizer)
    assert (_logits(load_gguf_model(path), ids) - _logits(model, ids)).abs().max().item() < 1e-2
    assert facts.architecture == "qwen2"


def test_tokenizer_and_chat_template_round_trip(merged_llama, tiny_tokenizer, tmp_path):
    path, _ = _write(merged_llama, tiny_tokenizer, tmp_path, "f16")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        want = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == want
    assert loaded.chat_template == JINJA
    assert loaded.eos_token == tiny_tokenizer.eos_token and loaded.pad_token == tiny_tokenizer.pad_token


def test_metadata_says_no_automatic_bos_and_names_end_of_turn(merged_llama, tiny_tokenizer, tmp_path):
    path, _ = _write(merged_llama, tiny_tokenizer, tmp_path, "q8_0")
    fields = GGUFReader(str(path)).fields
    value = lambda key: fields[key].contents()  # noqa: E731
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.ggml.eot_token_id") == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt2"
    assert value("general.file_type") == 7  # MOSTLY_Q8_0
    assert value("tokenizer.chat_template") == JINJA
    assert len(value("tokenizer.ggml.tokens")) == merged_llama.config.vocab_size


@pytest.mark.parametrize("config, quant, match", [
    (DeepseekV3Config(), "q8_0", "supports llama and qwen2"),
    (LlamaConfig(), "q4_0", "unknown GGUF quantization"),
    (LlamaConfig(attention_bias=True), "f16", "biases"),
    (LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}), "f16", "default RoPE"),
])
def test_unsupported_inputs_are_user_errors_with_a_fix(config, quant, match):
    with pytest.raises(UserError, match=match) as err:
        check_gguf_support(config, quant)
    assert err.value.hint


def test_non_byte_level_tokenizer_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="byte-level BPE"):
        pre_tokenizer_name(PreTrainedTokenizerFast(tokenizer_object=backend))
