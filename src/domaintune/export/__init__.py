"""Export: a tuned run as a merged Hugging Face model, a PEFT adapter, a GGUF file, or int8 weights.

    from domaintune.export import run_export
    report = run_export("runs/demo", "gguf", "exports/demo", quant="q8_0")

Each export is loaded back the way its runtime loads it and checked against base+adapter on a few
prompts (`export_report.json`/`.md` in the output folder). Names are imported lazily (peft's
`tuners/ia3/__init__.py` habit), so importing this package costs nothing until an export runs.
"""

from __future__ import annotations

from domaintune.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "run_export": "run", "check_format": "run", "FORMATS": "run",
    "ExportReport": "table", "VariantRow": "table", "ParityRow": "table",
    "load_int8": "quantize", "quantize_int8": "quantize", "save_int8": "quantize", "Int8Linear": "quantize",
    "write_gguf": "gguf", "QUANTS": "gguf",
    "jinja_template": "chat_formats", "ollama_template": "chat_formats",
    "open_run": "source", "TrainedRun": "source",
})
