"""domaintune.train: batches, the loss and the training loop.

Names are imported lazily (module `__getattr__`), so `import domaintune.train` does not pull in
torch until a name is used.
"""

from __future__ import annotations

from domaintune.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Example": "collate", "Encoded": "collate", "IGNORE_INDEX": "collate", "encode_record": "collate",
    "pack_examples": "collate", "collate_packed": "collate", "collate_padded": "collate",
    "length_grouped_order": "collate",
    "causal_lm_loss": "loss", "token_counts": "loss", "packing_supported": "loss",
})
