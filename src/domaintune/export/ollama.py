"""The Ollama `Modelfile` written next to a GGUF export.

    FROM ./model.gguf
    TEMPLATE \"\"\"{{ range .Messages }}<|im_start|>{{ .Role }}
    {{ .Content }}<|im_end|>
    {{ end }}<|im_start|>assistant
    \"\"\"
    PARAMETER stop "<|im_end|>"

`ollama create NAME -f OUT/Modelfile` reads it (FROM is relative to the Modelfile's folder). The
Go template comes from `chat_formats.ollama_template`; a default system message the training
template adds (SmolLM2's) becomes `SYSTEM`, which Ollama puts first when a chat has no system turn.
Not run here: no Ollama binary on the CI machine (docs/serving.md says what was checked).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from domaintune.export.chat_formats import ollama_template

MODELFILE = "Modelfile"


def write_modelfile(out: Path, gguf_name: str, template: Any) -> tuple[Path, list[str]]:
    """Write `out/Modelfile` for the GGUF `out/gguf_name`.

    Args:
        out: the export folder.
        gguf_name: the GGUF file's name inside `out`.
        template: the training `ChatTemplate` (its Go form and stop strings).

    Returns:
        The Modelfile path and notes for the report (empty when the template translated).

    Example:
        >>> write_modelfile(Path("out"), "model.gguf", get_template("chatml"))[1]   # doctest: +SKIP
        []
    """
    lines = [f"FROM ./{gguf_name}"]
    notes = []
    go = ollama_template(template)
    if go is None:
        notes.append("Ollama: the chat template has no Go form here, so the Modelfile has no TEMPLATE; "
                     "Ollama falls back to its own detection from the GGUF's tokenizer.chat_template")
    else:
        lines.append(f'TEMPLATE """{go.go_template}"""')
        if go.default_system is not None:
            lines.append(f'SYSTEM """{go.default_system}"""')
        if go.builtin == "deepseek_r1":
            notes.append("Ollama: Go templates cannot split strings, so earlier turns keep their <think> blocks")
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in template.stop]
    path = out / MODELFILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, notes


def ollama_name(text: str) -> str:
    """A model name Ollama accepts: lowercase letters, digits, '-', '_' and '.'.

    Example:
        >>> ollama_name("My Run #2")
        'my-run-2'
    """
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return name or "domaintune"
