"""Export fixtures: training-run folders made from the tiny models, as `domaintune train` lays them out.

A run folder holds `recipe.resolved.yaml` (model.name = the tiny model folder) and `adapter/` or
`model/` saved by the method itself. LoRA B starts at zero, so the fixtures give it random values:
an export that dropped the adapter would then show in every comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from domaintune.config import FullOptions, LoraOptions, PromptOptions
from domaintune.methods import get_method
from domaintune.models.load import load_model

OPTIONS = {"lora": LoraOptions(r=4, alpha=8), "full": FullOptions(), "prompt": PromptOptions(num_virtual_tokens=2)}


def perturb(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Give every trainable tensor of a freshly applied method random values (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and ("lora_B" in name or "prompt" in name):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
            elif param.requires_grad and "lora_A" not in name:
                param.add_(torch.randn(param.shape, generator=gen) * scale * 0.1)


def make_run(base: Path, out: Path, method: str = "lora", template: str = "chatml") -> Path:
    """Write a run folder for `base` trained (randomly) with `method`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.resolved.yaml").write_text(f"model:\n  name: {base}\n  template: {template}\n", encoding="utf-8")
    torch.manual_seed(0)
    chosen = get_method(method)
    model = chosen.apply(load_model(base), OPTIONS[method])
    perturb(model)
    chosen.save(model, out / ("model" if method == "full" else "adapter"))
    return out


@pytest.fixture(scope="session")
def run_factory(tmp_path_factory) -> Callable[..., Path]:
    """`run_factory(base, method="lora", template="chatml")` -> a run folder (built once per arguments)."""
    made: dict[tuple, Path] = {}

    def factory(base: Path, method: str = "lora", template: str = "chatml") -> Path:
        key = (str(base), method, template)
        if key not in made:
            made[key] = make_run(base, tmp_path_factory.mktemp(f"run_{method}"), method, template)
        return made[key]

    return factory


@pytest.fixture(scope="session")
def lora_run(run_factory, tiny_llama) -> Path:
    """A tiny LLaMA run with a perturbed LoRA adapter (ChatML template)."""
    return run_factory(tiny_llama)


@pytest.fixture(scope="session")
def merged_llama(lora_run):
    """The lora_run's adapter merged into its base (a plain LlamaForCausalLM)."""
    from domaintune.export.source import load_merged, open_run

    return load_merged(open_run(lora_run))
