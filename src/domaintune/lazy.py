"""Lazy package exports: a package names what it offers, each name imported on first use.

The habit of peft's `tuners/ia3/__init__.py` (module-level `__getattr__`, PEP 562), written once:

    __all__, __getattr__ = lazy_exports(__name__, {"load_model": "load", "get_template": "templates"})

`import domaintune.models` then costs nothing; `domaintune.models.load_model` imports
`domaintune.models.load` the first time it is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """`(__all__, __getattr__)` for `package`, whose name N lives in submodule `exports[N]`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), __getattr__
