"""Models: base-model loading, chat templates, and per-architecture facts.

Names are imported lazily (peft's `tuners/ia3/__init__.py` habit), so that importing
`domaintune.models.templates` alone, as the serve and data-facing code do, does not pull in torch
and transformers.
"""

from __future__ import annotations

from domaintune.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "domaintune_home": "load", "resolve_model": "load", "load_tokenizer": "load", "load_model": "load",
    "ChatTemplate": "templates", "get_template": "templates", "TEMPLATE_NAMES": "templates",
    "Conversation": "templates",
    "ArchFacts": "arch", "arch_facts": "arch", "linear_module_names": "arch",
})
