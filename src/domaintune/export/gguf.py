"""`--format gguf`: a merged model as one GGUF file for llama.cpp and Ollama, written with `gguf`.

What llama.cpp's `convert_hf_to_gguf.py` does for these models, and what transformers' GGUF loader
(`modeling_gguf_pytorch_utils.py`, `integrations/gguf/gguf_tokenizer_mapping.py`) reads back:

* Tensor names through gguf's `TensorNameMap` (`model.layers.3.self_attn.q_proj.weight` ->
  `blk.3.attn_q.weight`); a tied LM head is left out (no `output.weight`), which is how readers
  know the embeddings are tied.
* LLaMA's q/k projections are permuted per head from the Hugging Face rotary layout (halves) to
  llama.cpp's (interleaved pairs), as `LlamaModel.permute` does; transformers'
  `LlamaTensorProcessor` undoes it on load. Qwen2 uses NeoX rotary in llama.cpp: no permutation.
* `f16`: matrices in F16, vectors (norms, biases) in F32. `q8_0`: matrices in Q8_0 (blocks of 32
  int8 values with one f16 scale, via `gguf.quants`), except those whose rows are not a multiple of
  32, which stay F16 as llama.cpp leaves them.
* The tokenizer as `gpt2` (byte-level BPE) metadata: tokens, token types, merges, special ids,
  `add_bos_token = false` (the templates write BOS themselves, so prompts tokenize as in training),
  the pre-tokenizer name, and the training chat template as `tokenizer.chat_template`.

Supported: llama and qwen2 with default RoPE. Others raise a `UserError` pointing at the hf export
plus llama.cpp's own converter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domaintune.errors import UserError

QUANTS = ("f16", "q8_0")
Q8_BLOCK = 32


@dataclass(frozen=True)
class GgufFacts:
    """What was written.

    Attributes:
        path: the .gguf file.
        architecture: the GGUF architecture name ("llama" or "qwen2").
        quant: "f16" or "q8_0".
        tensors: tensors written.
        quantized: tensors stored as Q8_0.
        kept_f16: matrices left in F16 under q8_0 (rows not a multiple of 32).
        pre_tokenizer: the `tokenizer.ggml.pre` name written.
    """

    path: Path
    architecture: str
    quant: str
    tensors: int
    quantized: int
    kept_f16: int
    pre_tokenizer: str


def check_gguf_support(config: Any, quant: str) -> str:
    """Raise a UserError unless this model and quant can be written; returns the GGUF arch name.

    Example:
        >>> from transformers import LlamaConfig
        >>> check_gguf_support(LlamaConfig(), "q8_0")
        'llama'
    """
    if quant not in QUANTS:
        raise UserError(f"unknown GGUF quantization '{quant}'", hint=f"use --quant {' or '.join(QUANTS)}")
    family = getattr(config, "model_type", "?")
    if family not in ("llama", "qwen2"):
        raise UserError(f"--format gguf --quant {quant} supports llama and qwen2 models, not '{family}'",
                        hint="export with --format hf, then run llama.cpp's convert_hf_to_gguf.py on that folder")
    if family == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise UserError("--format gguf does not write llama models with attention or MLP biases",
                        hint="export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    kind = _rope(config)[1]
    if kind != "default":
        raise UserError(f"--format gguf writes default RoPE only, this model uses '{kind}'",
                        hint="export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    return family


def write_gguf(model: Any, tokenizer: Any, chat_template: str, stop_ids: list[int], path: Path,
               quant: str = "f16", name: str = "domaintune export") -> GgufFacts:
    """Write a merged model, its tokenizer and chat template to one GGUF file.

    Args:
        model: a plain (merged) llama or qwen2 causal LM.
        tokenizer: its byte-level BPE tokenizer.
        chat_template: the training template as Jinja.
        stop_ids: the template's stop ids; the first is written as the end-of-turn token.
        path: the file to write (its folder is created).
        quant: "f16" or "q8_0".
        name: `general.name`.

    Returns:
        What was written.

    Raises:
        UserError: an unsupported architecture, RoPE variant, quantization or tokenizer.

    Example:
        >>> write_gguf(merged, tok, jinja, [2], Path("out/model.gguf"), "q8_0").quantized   # doctest: +SKIP
        211
    """
    import gguf

    config = model.config
    arch = check_gguf_support(config, quant)
    pre = pre_tokenizer_name(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    # transformers' loader reads any llama file whose name says "mistral" as a Mistral model.
    writer.add_name(name.replace("mistral", "m-istral").replace("Mistral", "M-istral"))
    writer.add_type("model")
    _add_hparams(writer, config, arch, quant)
    _add_tokenizer(writer, tokenizer, pre, chat_template, stop_ids, config.vocab_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    counts = _add_tensors(writer, model, arch, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufFacts(path, arch, quant, counts[0], counts[1], counts[2], pre)


def load_gguf_model(path: Path) -> Any:
    """Read a GGUF back with transformers' loader, dequantized to float32, in eval mode (for parity checks).

    Example:
        >>> load_gguf_model(Path("out/model.gguf")).config.model_type   # doctest: +SKIP
        'llama'
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    # float32 and dequantized: a plain dense model whatever the file's type, with or without `kernels`.
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True)).eval()


# ---- hyperparameters ---------------------------------------------------------------------------

def _rope(config: Any) -> tuple[float, str]:
    params = getattr(config, "rope_parameters", None) or {}  # transformers 5; 4.x kept rope_theta/rope_scaling
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def _add_hparams(writer: Any, config: Any, arch: str, quant: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)


# ---- tensors -----------------------------------------------------------------------------------

def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Reorder a q/k projection's rows from Hugging Face's rotary layout to llama.cpp's.

    Same as `LlamaModel.permute` in llama.cpp's `convert_hf_to_gguf.py`.

    Example:
        >>> permute_qk(np.arange(8.0)[:, None], 1).ravel().tolist()
        [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensors(writer: Any, model: Any, arch: str, quant: str) -> tuple[int, int, int]:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(_model_arch(arch), config.num_hidden_layers)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    written = quantized = kept = 0
    for key, tensor in model.state_dict().items():
        if tied and key.endswith("lm_head.weight"):
            continue
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"no GGUF name for tensor '{key}' of this {arch} model",
                            hint="export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
        data = _permuted(tensor.detach().float().cpu().numpy(), target, config, arch)
        array, raw = _encode(data, quant)
        writer.add_tensor(target, array, raw_dtype=raw)
        written += 1
        quantized += raw is not None
        kept += quant == "q8_0" and raw is None and data.ndim > 1
    return written, quantized, kept


def _model_arch(arch: str) -> Any:
    import gguf

    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)


def _permuted(data: np.ndarray, target: str, config: Any, arch: str) -> np.ndarray:
    if arch != "llama":
        return data
    heads = config.num_attention_heads
    if target.endswith("attn_q.weight"):
        return permute_qk(data, heads, heads)
    if target.endswith("attn_k.weight"):
        return permute_qk(data, heads, getattr(config, "num_key_value_heads", None) or heads)
    return data


def _encode(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    import gguf

    if data.ndim == 1:
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


# ---- tokenizer ---------------------------------------------------------------------------------

def pre_tokenizer_name(tokenizer: Any) -> str:
    """The llama.cpp `tokenizer.ggml.pre` name for a byte-level BPE tokenizer's text splitting.

    Raises:
        UserError: the tokenizer is not byte-level BPE, or splits text in a way no known name covers.

    Example:
        >>> pre_tokenizer_name(smollm_tokenizer)   # doctest: +SKIP
        'gpt2'
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise UserError("--format gguf writes byte-level BPE tokenizers (SmolLM2, Qwen2, Llama 3) only",
                        hint="export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    pre = spec["pre_tokenizer"]
    steps = pre.get("pretokenizers", []) if pre["type"] == "Sequence" else [pre]
    kinds = [step["type"] for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        name = _split_names().get(steps[0].get("pattern", {}).get("Regex"))
        if name is not None:
            return name
    raise UserError("no llama.cpp pre-tokenizer is known to split text like this tokenizer",
                    hint="export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")


def _split_names() -> dict[str, str]:
    # The regexes transformers' GGUF reader maps each name back to, so a file we write reads back
    # with the same splitting. The first name listed for a regex wins (e.g. "llama3" forms).
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return {}
    preferred = {"llama-bpe": 0, "qwen2": 0}
    names: dict[str, str] = {}
    for name, regex in sorted(GGUF_PRE_TOKENIZER_SPLITS.items(), key=lambda kv: preferred.get(kv[0], 1)):
        names.setdefault(regex, name)
    return names


def _add_tokenizer(writer: Any, tokenizer: Any, pre: str, chat_template: str, stop_ids: list[int],
                   vocab_size: int) -> None:
    tokens, types = _vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None and token_id < len(tokens):
            add(token_id)
    if stop_ids:
        writer.add_eot_token_id(stop_ids[0])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def _vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    # Added tokens past the embedding matrix (a tokenizer class that appends its default
    # "<|endoftext|>") can never reach the model; llama.cpp needs one token per embedding row.
    beyond = [index for index in by_id if index >= vocab_size and index not in added]
    if beyond:
        raise UserError(f"the tokenizer has ids up to {max(beyond)} but the model only {vocab_size} embeddings",
                        hint="resize the model's embeddings to the tokenizer before training")
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows past the tokenizer (padded vocabularies), as llama.cpp writes them
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _merges(tokenizer: Any) -> list[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    return [" ".join(m) if isinstance(m, list) else m for m in merges]
