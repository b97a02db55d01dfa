"""Capture and restore every random generator a training run draws from, as plain JSON.

A resumed run must draw the same dropout masks, noise and shuffles as the run it continues, so a
checkpoint saves the state of Python's `random`, NumPy's global generator, torch's CPU generator and
(when CUDA is present) every CUDA device's generator. The state is JSON, never a pickle, so
`rng.json` can sit in a checkpoint that is safe to open:

    state = capture_rng()
    json.dumps(state)            # plain lists, ints, floats and base64 strings
    restore_rng(state)
"""

from __future__ import annotations

import base64
import logging
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

RNG_FORMAT = 1


def _bytes_tensor_to_b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_bytes_tensor(text: str) -> torch.Tensor:
    # torch's set_rng_state wants a CPU uint8 tensor; bytearray keeps the buffer writable.
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """Snapshot the state of every global random generator as JSON-serializable values.

    Returns:
        A dict with keys ``format``, ``python`` (``random.getstate()`` with tuples as lists),
        ``numpy`` (the legacy ``np.random.get_state()`` tuple as a list, keys as ints), ``torch_cpu``
        (base64 of the generator's bytes) and ``cuda`` (a list of base64 strings, one per device;
        empty when CUDA is absent or not yet initialised by this process).

    Example:
        >>> state = capture_rng(); a = random.random(); restore_rng(state); a == random.random()
        True
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda: list[str] = []
    # A CPU run on a GPU machine never touched CUDA; reading its RNG would create a context per GPU.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [_bytes_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return {
        "format": RNG_FORMAT,
        "python": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch_cpu": _bytes_tensor_to_b64(torch.get_rng_state()),
        "cuda": cuda,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put every global random generator back to a state taken by `capture_rng`.

    Args:
        state: the dict `capture_rng` returned (possibly after a JSON round trip).

    Raises:
        ValueError: when ``state`` is not in the format `capture_rng` writes.
    """
    if state.get("format") != RNG_FORMAT:
        raise ValueError(f"unknown RNG state format {state.get('format')!r} (expected {RNG_FORMAT})")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_b64_to_bytes_tensor(state["torch_cpu"]))
    _restore_cuda(state.get("cuda") or [])


def _restore_cuda(saved: list[str]) -> None:
    if not saved:
        return
    if not torch.cuda.is_available():
        log.warning("checkpoint holds CUDA RNG states but CUDA is not available; GPU randomness "
                    "will not match the original run")
        return
    count = torch.cuda.device_count()
    if count != len(saved):
        # Restore what lines up; a different device count already breaks bit-identity elsewhere.
        log.warning("checkpoint holds %d CUDA RNG states but %d devices are visible", len(saved), count)
    for device, text in enumerate(saved[:count]):
        torch.cuda.set_rng_state(_b64_to_bytes_tensor(text), device)
