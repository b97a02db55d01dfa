"""The deployment commands: export, serve, chat."""

from __future__ import annotations

import argparse

from domaintune.cli.common import kv_pair
from domaintune.config import ModelConfig, field_help
from domaintune.errors import UserError

FORMATS = ("hf", "adapter", "gguf", "int8")


def build_export(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune export runs/demo --format adapter -o exports/demo-adapter\n"
                "  domaintune export runs/demo --format hf -o exports/demo-hf --data prepared/test.jsonl\n"
                "  domaintune export runs/demo --format gguf --quant q8_0 -o exports/demo-gguf\n"
                "  domaintune export runs/demo --format int8 -o exports/demo-int8")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `domaintune train`")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--quant", choices=["f16", "q8_0"], help="gguf only: f16 (default) or q8_0")
    p.add_argument("-o", "--output-dir", required=True, help="the export folder")
    p.add_argument("--data", help="prepared chat records for the parity prompts and metric (e.g. test.jsonl)")
    p.add_argument("--samples", type=int, default=8, help="parity prompts (default: 8)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run model code shipped with the base folder (never taken from the run's recipe)")


def run_export(a: argparse.Namespace) -> int:
    from domaintune import api

    report = api.export(a.run_dir, a.format, a.output_dir, quant=a.quant, data=a.data, samples=a.samples,
                        trust_remote_code=a.trust_remote_code)
    print(report.to_markdown())
    return 0


def build_serve(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune serve embedded --adapter icd=runs/demo --port 8000\n"
                "  DOMAINTUNE_API_KEY=secret domaintune serve models/my-7b --adapter legal=runs/legal\n"
                "  domaintune serve embedded --adapter icd=runs/v1 --shadow icd=runs/v2 --store traffic.db\n"
                "  curl localhost:8000/v1/chat/completions -d '{\"model\": \"icd\", \"messages\": [...]}'")
    p.add_argument("model", nargs="?", default="embedded", help=field_help(ModelConfig, "name"))
    p.add_argument("--adapter", action="append", default=[], type=kv_pair, metavar="NAME=PATH",
                   help="serve a trained run or adapter under NAME (repeatable)")
    p.add_argument("--template", default="auto", help=field_help(ModelConfig, "template"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="required bearer key (default: $DOMAINTUNE_API_KEY; none: open)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests generated together (1: no batching)")
    p.add_argument("--batch-window-ms", type=float, default=15.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="queued requests before answering 429")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request fails with 504")
    p.add_argument("--cache-size", type=int, default=0, help="cached answers to repeated greedy requests (0: off)")
    p.add_argument("--request-log", help="JSONL log of every request (PII-masked, owner-only, rotated at 64 MiB)")
    p.add_argument("--request-log-raw", action="store_true", help="log prompts and outputs unmasked")
    p.add_argument("--store", metavar="URL",
                   help="record every answered request (PII-masked) in a database for `domaintune monitor` and "
                        "take POST /v1/feedback: a SQLite file path, or an SQLAlchemy URL (postgresql+psycopg://...)")
    p.add_argument("--drift-reference", action="append", default=[], type=kv_pair, metavar="NAME=DATA",
                   help="live drift gauges on /metrics for served NAME against its prepared training data "
                        "(repeatable; `domaintune monitor drift` reads the same from --store)")
    p.add_argument("--shadow", action="append", default=[], type=kv_pair, metavar="NAME=CANDIDATE",
                   help="a candidate run answers copies of NAME's requests unseen, after NAME has answered; "
                        "disagreements go to the store's review queue (repeatable)")
    p.add_argument("--shadow-rate", type=float, default=0.25, help="share of NAME's requests copied (default 0.25)")
    p.add_argument("--shadow-threshold", type=float, default=0.5,
                   help="disagreement (0-1: labels differ, or 1 - chrF/100) over which a case is reviewed")
    p.add_argument("--store-retention-days", type=float, default=30.0,
                   help="prune stored requests older than this (default 30)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback --host without an API key (refused otherwise)")
    p.add_argument("--closed-set", choices=["auto", "off"], default="off",
                   help="auto: requests to an adapter trained on labels decode inside its answer set, with a "
                        "confidence (a request's own guided_choice always does)")
    p.add_argument("--kb-changed-ok", action="store_true",
                   help="serve an adapter whose knowledge base changed since training (refused otherwise)")
    p.add_argument("--threads", type=int, help="CPU threads for generation")


def run_serve(a: argparse.Namespace) -> int:
    from domaintune import api

    adapters = _unique(a.adapter)
    api.serve(a.model, adapters, template=a.template, host=a.host, port=a.port, api_key=a.api_key,
              threads=a.threads, max_batch_size=a.max_batch_size, batch_window_ms=a.batch_window_ms,
              max_queue=a.max_queue, request_timeout_s=a.request_timeout, cache_size=a.cache_size,
              request_log=a.request_log, request_log_raw=a.request_log_raw, closed_set=a.closed_set,
              store=a.store, store_retention_days=a.store_retention_days,
              drift_references=_unique(a.drift_reference), shadows=_unique(a.shadow),
              shadow_rate=a.shadow_rate, shadow_threshold=a.shadow_threshold,
              kb_changed_ok=a.kb_changed_ok, insecure_no_auth=a.insecure_no_auth)
    return 0


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, path in pairs:
        if name in out:
            raise UserError(f"the name '{name}' is given twice", hint="give each --adapter (or --drift-reference) NAME once")
        out[name] = path
    return out


def build_chat(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  domaintune chat embedded\n  domaintune chat embedded --adapter icd=runs/demo --system 'You code diagnoses.'"
    p.add_argument("model", nargs="?", default="embedded", help=field_help(ModelConfig, "name"))
    p.add_argument("--adapter", type=kv_pair, metavar="NAME=PATH", help="chat with a trained run or adapter")
    p.add_argument("--template", default="auto", help=field_help(ModelConfig, "template"))
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)


def run_chat(a: argparse.Namespace) -> int:
    from domaintune import api

    api.chat(a.model, a.adapter, template=a.template, system=a.system, max_tokens=a.max_tokens,
             temperature=a.temperature)
    return 0
