"""Models: base-model loading, chat templates, and per-architecture facts.

Names are imported lazily (peft's `tuners/ia3/__init__.py` habit), so that importing
`domaintune.models.templates` alone, as the serve and data-facing code do, does not pull in torch
and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "domaintune_home": "load", "resolve_model": "load", "load_tokenizer": "load", "load_model": "load",
    "ChatTemplate": "templates", "get_template": "templates", "TEMPLATE_NAMES": "templates",
    "Conversation": "templates",
    "ArchFacts": "arch", "arch_facts": "arch", "linear_module_names": "arch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'domaintune.models' has no attribute {name!r}")
    module = importlib.import_module(f"domaintune.models.{_EXPORTS[name]}")
    return getattr(module, name)
