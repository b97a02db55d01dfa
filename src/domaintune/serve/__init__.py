"""domaintune.serve: an OpenAI-compatible server (and a terminal chat) for a base model and its
trained adapters.

    served = load_served("embedded", {"support": "runs/support"})   # adapters picked by name
    app = build_app(served, ServeOptions(max_batch_size=8, api_key=resolve_api_key(None)))
    run_server(app, host="127.0.0.1", port=8000)

Modules: `adapters` (models by name), `codec` (prompt ids, streamed text), `engine` (dynamic
batching worker), `handlers` (request flow), `app` (FastAPI routes), `schemas` (wire format),
`metrics` (Prometheus), `requestlog` (JSONL log), `cache`, `options`, `server` (uvicorn), `chat`.
Names are imported lazily so `import domaintune.serve` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_served": "adapters", "ServedModels": "adapters",
    "build_app": "app",
    "ServeOptions": "options", "resolve_api_key": "options", "API_KEY_ENV": "options",
    "run_server": "server", "serve_in_thread": "server",
    "chat_loop": "chat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'domaintune.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"domaintune.serve.{_EXPORTS[name]}"), name)
