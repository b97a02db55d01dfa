"""Serve fixtures: the tiny LLaMA with two LoRA adapters (random B, so each changes the outputs),
loaded once per module as `ServedModels`, and a helper to run an app on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domaintune.config.methods import LoraOptions
from domaintune.methods.base import get_method
from domaintune.models.load import load_model
from domaintune.serve.adapters import load_served


def make_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """Save a LoRA adapter for `base_dir` whose B matrices are random (LoRA inits B to zero)."""
    torch.manual_seed(seed)
    method = get_method("lora")
    model = method.apply(load_model(base_dir), LoraOptions(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    method.save(model, out / "adapter")
    return out


@pytest.fixture(scope="session")
def lora_runs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Two run folders, each with adapter/ (as `domaintune train` writes)."""
    return {name: make_lora(tiny_llama, tmp_path_factory.mktemp(f"run_{name}"), seed)
            for name, seed in (("tuned", 1), ("other", 2))}


@pytest.fixture(scope="module")
def served(tiny_llama, lora_runs):
    """The tiny LLaMA served as "tiny" plus the adapters "tuned" and "other"."""
    return load_served(str(tiny_llama), lora_runs, template="chatml", base_name="tiny")


@pytest.fixture
def start(served):
    """start(decode=..., **options) -> (base_url, service): an app on a free loopback port,
    shut down (gracefully) at the end of the test."""
    from contextlib import ExitStack

    from domaintune.models.decode import decode_stream
    from domaintune.serve.app import build_app
    from domaintune.serve.options import ServeOptions
    from domaintune.serve.server import serve_in_thread

    with ExitStack() as stack:
        def _start(decode=decode_stream, **options):
            app = build_app(served, ServeOptions(**options), decode=decode)
            return stack.enter_context(serve_in_thread(app)), app.state.service

        yield _start
