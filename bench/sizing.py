"""Per-process training memory from the pre-flight estimator, for the models our users outgrow one GPU with.

    python bench/sizing.py          # prints the markdown table in docs/distributed.md (seconds, no weights)

The models are built on torch's meta device from their published configs (no weights are
downloaded or allocated), the method is applied (LoRA r=16 on every linear of the decoder, or full
fine-tuning), and `train/summary.py:estimate_memory` gives one process's peak under ddp and fsdp2
for 1, 8 and 64 processes, with fp32 master weights, bf16 activations (domaintune's GPU path) and
one 4096-token micro-batch. These are estimates: docs/distributed.md says what was measured.
"""

from __future__ import annotations

import torch

MODELS = {
    "deepseek-llm-7b (LLaMA)": ("llama", dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                                              num_hidden_layers=30, num_attention_heads=32, num_key_value_heads=32)),
    "R1-Distill-Qwen-32B (Qwen2)": ("qwen2", dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                                                  num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8)),
    "DeepSeek-V3 (MoE, 671B)": ("deepseek_v3", {}),
}
TOKENS = 4096


def build(kind: str, overrides: dict) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(kind, **overrides)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def main() -> None:
    from domaintune.config import LoraOptions
    from domaintune.methods.base import get_method
    from domaintune.train.summary import estimate_memory

    print("| model | method | processes | ddp GiB/process | fsdp2 GiB/process |")
    print("|---|---|---|---|---|")
    for name, (kind, overrides) in MODELS.items():
        for method in ("lora", "full"):
            model = build(kind, overrides)
            if method == "lora":
                model = get_method("lora").apply(model, LoraOptions(r=16, layers="all"))
            for world in (1, 8, 64):
                gib = [estimate_memory(model, TOKENS, False, 2, world, strategy).total / 2**30
                       for strategy in ("ddp", "fsdp2")]
                print(f"| {name} | {method} | {world} | {gib[0]:,.0f} | {gib[1]:,.0f} |")


if __name__ == "__main__":
    main()
