"""domaintune.train: batches, the loss and the training loop.

Names are imported lazily (module `__getattr__`), so `import domaintune.train` does not pull in
torch until a name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Example": "collate", "Encoded": "collate", "IGNORE_INDEX": "collate", "encode_record": "collate",
    "pack_examples": "collate", "collate_packed": "collate", "collate_padded": "collate",
    "length_grouped_order": "collate",
    "causal_lm_loss": "loss", "token_counts": "loss", "packing_supported": "loss",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"domaintune.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'domaintune.train' has no attribute {name!r}")
