"""The pieces every HTML page of domaintune is made of: inline CSS, tables, boxes, figures, the page itself.

A page opens offline: CSS inline, plots as base64 PNGs, no script, web font or link to fetch.
Every string that came from a user goes through `html.escape`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from domaintune.files import write_text_atomic
from domaintune.eval.plots import fmt_number, is_number

# System fonts only: a web font would be a network fetch.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;
 color:#222;line-height:1.45} h1{font-size:1.6em} h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;
 vertical-align:top} th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.box{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.8em 0;background:#fafafa}
.warn{border-color:#d9822b;background:#fff6ec} .ok{border-color:#4c9a2a;background:#f3faef} .verdict{font-weight:600}
.muted{color:#666;font-size:.9em} pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5em}
summary{cursor:pointer} img{max-width:100%;height:auto}
"""


def write_page(out_path: str | Path, title: str, sections: Sequence[str]) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(s for s in sections if s)
            + '\n<p class="muted">Written by domaintune.</p></body></html>\n')
    write_text_atomic(path, page)
    return path


def kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = [(str(k), fmt_number(v) if is_number(v) else as_text(v)) for k, v in rows]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in cells)
    return f"<table>{body}</table>"


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    return "".join(f"<p><b>{escape(title)}</b></p><pre>{escape(as_text(value))}</pre>" for title, value in pairs)


def box(inner: str, kind: str = "") -> str:
    return f'<div class="box {kind}">{inner}</div>'


def figure(alt: str, uri: str) -> str:
    # `uri` is a data: URI built here from bytes, never user text; `alt` is escaped.
    return f'<p><img alt="{escape(alt)}" src="{uri}"></p>'


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metric dicts ({"f1": {"micro": ..}}) become dotted rows ("f1.micro")."""
    rows: list[tuple[str, Any]] = []
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        rows += flatten(value, key + ".") if isinstance(value, Mapping) else [(key, value)]
    return rows


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def clip(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"
