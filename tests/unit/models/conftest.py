"""The tiny LLaMA with its matrices redrawn at std 0.3 (seeded): sharp, position-sensitive logits."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def random_tiny_llama(tiny_llama):
    def make(seed: int):
        from transformers import AutoModelForCausalLM

        net = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in net.parameters():
                if param.dim() > 1:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        return net
    return make
