"""Shared fixtures: a tiny tokenizer and tiny LLaMA / Qwen2 / DeepSeek-V3 models, all offline.

Each model fixture is a folder written with `save_pretrained` (safetensors) plus the tokenizer, so
code under test loads it exactly as it loads a user's model. Built once per session (per xdist
worker); each takes well under a second.

    def test_x(tiny_llama):            # a Path
        model = load_model(tiny_llama)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

# Parallel workers share two cores; more threads per worker only adds contention.
torch.set_num_threads(1)


# ---- deprecated calls of ours fail the test ----------------------------------------------------
# pyproject's `error::FutureWarning:domaintune` rule only sees warnings attributed to our modules,
# but a deprecated keyword passed through `nn.Module.__call__` (`model(past_key_values=...)`) is
# attributed to torch's module.py. So `warnings.warn` is wrapped: a DeprecationWarning or
# FutureWarning is ours when the first frame outside the warning's own module and the call
# plumbing below is in domaintune; it is then raised as an error at our call. Deprecated calls that
# a library makes itself (peft asking transformers for `is_gradient_checkpointing`) stay warnings.
_PLUMBING = ("torch/nn/modules/module.py", "transformers/utils/generic.py", "transformers/utils/deprecation.py",
             "/functools.py", "/contextlib.py")
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_real_warn = warnings.warn


def _our_source() -> str:
    import domaintune

    return str(Path(domaintune.__file__).resolve().parent) + "/"


_OURS = _our_source()  # src/domaintune/, never a venv under a checkout that happens to be named so


def _is_our_call(frame) -> bool:
    origin = frame.f_code.co_filename
    while frame is not None:
        name = frame.f_code.co_filename
        if name != origin and not any(p in name for p in _PLUMBING):
            return str(Path(name).resolve()).startswith(_OURS)
        frame = frame.f_back
    return False


def _warn(message, category=None, stacklevel=1, source=None, **kwargs):
    kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(kind, _DEPRECATIONS) and _is_our_call(sys._getframe(1)):
        raise kind(f"deprecated call in domaintune: {message}")
    return _real_warn(message, category, stacklevel + 1, source, **kwargs)


def pytest_configure(config):
    warnings.warn = _warn


def pytest_unconfigure(config):
    warnings.warn = _real_warn

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                  "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]
CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_VOCAB = 512
_CORPUS = [
    "Hello there, how are you today? I am fine, thank you for asking.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "system\nYou are a helpful assistant.\nuser\nExplain the theorem.\nassistant\nSure, here it is.",
    "Machine learning models learn patterns from data and make predictions on new inputs.",
    "Please summarize the report in three sentences and list the key risks.",
    "The patient reported a mild headache and was advised to rest and drink water.",
    "Contract law covers agreements between parties, including offer, acceptance and consideration.",
    "你好，世界。今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，它让计算机从数据中学习。",
    "请用三句话总结这份报告，并列出主要风险。",
    "北京是中国的首都，上海是最大的城市。",
]


def build_tiny_tokenizer(out: Path):
    """Train a byte-level BPE on the in-code corpus and save it as a fast HF tokenizer in `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>",
                                        extra_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHATML_JINJA
    tokenizer.save_pretrained(out)
    return tokenizer


def _save_tiny_model(config, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def _token_ids(tokenizer_dir: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny byte-level BPE tokenizer (ChatML chat template, ~500 tokens)."""
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    """The tiny tokenizer, loaded."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer LLaMA (hidden 32, GQA 4/2 heads, untied embeddings) with the tiny tokenizer."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, **_token_ids(tiny_tokenizer_dir))
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer Qwen2 (qkv bias, tied embeddings as in Qwen2-0.5B) with the tiny tokenizer."""
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                         **_token_ids(tiny_tokenizer_dir))
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_deepseek_v3(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer DeepSeek-V3: MLA attention, layer 0 dense, layer 1 MoE (4 routed experts, top-2, 1 shared)."""
    from transformers import DeepseekV3Config

    config = DeepseekV3Config(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                              num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                              topk_group=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
                              qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=256,
                              **_token_ids(tiny_tokenizer_dir))
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_deepseek_v3"))


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once, ~30 s, then cached)."""
    from domaintune.models.load import resolve_model

    return resolve_model("embedded")
