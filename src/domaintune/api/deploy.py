"""`api.export`, `api.serve` and `api.chat`: from a training run to files and a running service.

    report = api.export("runs/demo", "gguf", "exports/demo-q8", quant="q8_0", data="prepared/test.jsonl")
    api.serve("embedded", {"icd": "runs/demo"}, port=8000)      # OpenAI-compatible, blocks
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domaintune.api.data import resolve_path, training_split


def export(run_dir: str, fmt: str, output_dir: str, *, quant: str | None = None, data: str | None = None,
           samples: int = 8, trust_remote_code: bool = False):
    """Write a run in an deployable format and check parity with base + adapter.

    Args:
        run_dir: a folder written by `domaintune train`.
        fmt: "hf" (merged safetensors), "adapter" (PEFT, for vLLM --lora-modules), "gguf", "int8".
        output_dir: the export folder (export_report.json/.md go there too).
        quant: for gguf: "f16" or "q8_0".
        data: prepared chat records for the parity prompts and the metric (default: built-in prompts).
        samples: parity prompts.
        trust_remote_code: run model code shipped with the base folder (the user's choice only: the
            run folder's recipe is not trusted for it).

    Returns:
        The `ExportReport` (size, speed, parity and metric per variant).
    """
    from domaintune.export.run import run_export
    from domaintune.train.data import load_split

    records = list(load_split(resolve_path(data))) if data else None
    return run_export(run_dir, fmt, output_dir, quant=quant, eval_records=records, samples=samples,
                      trust_remote_code=trust_remote_code)


def serve(model: str = "embedded", adapters: Mapping[str, str] | None = None, *, template: str = "auto",
          host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, threads: int | None = None,
          trust_remote_code: bool = False, insecure_no_auth: bool = False,
          drift_references: Mapping[str, str] | None = None, shadows: Mapping[str, str] | None = None,
          **options: Any) -> None:
    """Serve a base model and named adapters over an OpenAI-compatible HTTP API until SIGTERM.

    Args:
        model: the base model ("embedded", a folder or a .gguf file).
        adapters: {name: run folder or adapter folder}; a request's `model` field picks one by name.
        template: the chat template; "auto": the one the adapters' runs recorded, else the tokenizer's.
        host, port: where to listen (loopback unless told otherwise).
        api_key: required bearer key (default: $DOMAINTUNE_API_KEY; none: open).
        threads: CPU threads for generation.
        trust_remote_code: run model code shipped with the folder.
        insecure_no_auth: allow a non-loopback `host` without an API key (refused before loading otherwise).
        drift_references: {served name: its prepared training data (folder or train.jsonl)}: live
            drift gauges on /metrics (`serve/drift.py`).
        shadows: {served name: a candidate run} answering copies of its requests unseen
            (`serve/shadow.py`; `shadow_rate` and `shadow_threshold` in **options).
        **options: `serve.options.ServeOptions` fields (max_batch_size, batch_window_ms, max_queue,
            closed_set, ...), and `kb_changed_ok` (serve adapters whose knowledge base changed).
    """
    import torch

    from domaintune.serve import ServeOptions, build_app, load_served, resolve_api_key, run_server
    from domaintune.serve.server import check_bind

    key = resolve_api_key(api_key)
    check_bind(host, bool(key), insecure_no_auth)  # before minutes of loading
    if threads:
        torch.set_num_threads(threads)
    kb_changed_ok = bool(options.pop("kb_changed_ok", False))
    references = {name: training_split(path) for name, path in (drift_references or {}).items()}
    if options.get("store"):  # an unreachable database is said before minutes of loading
        from domaintune.data.store import Store

        Store(options["store"]).close()
    served = load_served(model, dict(adapters or {}), template=template, trust_remote_code=trust_remote_code,
                         kb_changed_ok=kb_changed_ok, shadows=shadows)
    if served.shadows and not options.get("store"):
        import logging

        logging.getLogger(__name__).warning("--shadow without --store: disagreements are counted on /metrics "
                                            "but no case is kept for review")
    app = build_app(served, ServeOptions(api_key=key, **options), drift_references=references)
    run_server(app, host=host, port=port, insecure_no_auth=insecure_no_auth)


def chat(model: str = "embedded", adapter: tuple[str, str] | None = None, *, template: str = "auto",
         system: str | None = None, max_tokens: int = 256, temperature: float = 0.0) -> list[dict[str, str]]:
    """An interactive terminal chat with streamed replies (/exit to leave); returns the conversation."""
    from domaintune.models.decode import SamplingParams
    from domaintune.serve import chat_loop, load_served

    served = load_served(model, dict([adapter]) if adapter else {}, template=template)
    name = adapter[0] if adapter else served.base_name
    with served.activate(name) as net:
        return chat_loop(net, served.tokenizer, served.template,
                         params=SamplingParams(max_new_tokens=max_tokens, temperature=temperature), system=system,
                         knowledge=served.routes[name].knowledge)
