"""Tests for domaintune.train.rng: capture/restore of every global generator through plain JSON."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.train.rng import capture_rng, restore_rng


def _draw() -> tuple:
    # Gaussian draws exercise the cached second value of Python's and NumPy's Box-Muller.
    return (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), np.random.randint(1 << 30),
            torch.rand(4).tolist(), torch.randn(3).tolist(), torch.randperm(10).tolist(),
            torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), gauss_before=st.booleans())
def test_round_trip_through_json_repeats_every_generator(seed, gauss_before):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if gauss_before:  # leave a cached Gaussian half-pair in Python's and NumPy's state
        random.gauss(0, 1)
        np.random.standard_normal(1)
    state = json.loads(json.dumps(capture_rng(), allow_nan=False))
    first = _draw()
    restore_rng(state)
    assert _draw() == first


def test_restore_after_scrambling():
    state = capture_rng()
    first = _draw()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert _draw() != first  # the scramble really changes the draws
    restore_rng(state)
    assert _draw() == first


def test_capture_does_not_advance_generators():
    state = capture_rng()
    capture_rng()
    first = _draw()
    restore_rng(state)
    assert _draw() == first


def test_state_is_plain_json():
    state = capture_rng()
    assert set(state) == {"format", "python", "numpy", "torch_cpu", "cuda"}
    assert isinstance(state["torch_cpu"], str) and all(isinstance(k, int) for k in state["numpy"][1])
    assert (state["cuda"] == []) == (not torch.cuda.is_initialized())  # no CUDA context made just to read it
    assert json.loads(json.dumps(state)) == state


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="format"):
        restore_rng({**capture_rng(), "format": 99})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_cuda_states_without_cuda_warn_and_restore_the_rest(caplog):
    state = {**capture_rng(), "cuda": ["AAAA"]}
    first = _draw()
    with caplog.at_level(logging.WARNING, logger="domaintune.train.rng"):
        restore_rng(state)
    assert "CUDA" in caplog.text
    assert _draw() == first


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    torch.cuda.init()  # a GPU run has initialised CUDA before it checkpoints
    state = json.loads(json.dumps(capture_rng()))
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda").tolist()
    restore_rng(state)
    assert torch.rand(4, device="cuda").tolist() == first
