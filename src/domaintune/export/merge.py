"""`--format hf`: the adapter merged into the base, as a plain Hugging Face model folder.

The folder holds safetensors weights, the tokenizer, a `generation_config.json` whose
`eos_token_id` lists the template's stop tokens, and the training chat template as Jinja (in
`chat_template.jinja`, which transformers 5 reads, and in `tokenizer_config.json`, which older
transformers and vLLM builds read). So `AutoModelForCausalLM.from_pretrained(OUT)`, `vllm serve OUT`
and `apply_chat_template` all format and stop exactly as training did.

The tokenizer and generation-config writers here are shared by the adapter and int8 exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENIZER_CONFIG = "tokenizer_config.json"


def save_tokenizer(tokenizer: Any, chat_template: str, out: Path) -> None:
    """Save the tokenizer with `chat_template` set, in both places readers look for it.

    The caller's tokenizer is left as it was (its template is restored after saving).
    """
    own = tokenizer.chat_template
    tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(str(out))
    finally:
        tokenizer.chat_template = own
    path = out / TOKENIZER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["chat_template"] = chat_template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_generation_config(tokenizer: Any, stop_ids: list[int], out: Path) -> None:
    """Write `generation_config.json`: greedy by default, stopping on every template stop token."""
    from transformers import GenerationConfig

    from domaintune.models.codec import pad_id

    pad = pad_id(tokenizer)
    config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids or None, pad_token_id=pad,
                              do_sample=False)
    config.save_pretrained(str(out))


def export_hf(merged: Any, tokenizer: Any, chat_template: str, stop_ids: list[int], out: Path) -> list[Path]:
    """Save a merged model as a Hugging Face folder for transformers and vLLM.

    Args:
        merged: the plain model (`source.load_merged`).
        tokenizer: the base tokenizer.
        chat_template: the training template as Jinja (`chat_formats.jinja_template`).
        stop_ids: the template's stop token ids (`models.codec.stop_ids`).
        out: the output folder (created).

    Returns:
        The files written.

    Example:
        >>> export_hf(load_merged(run), tok, jinja_template(tpl, tok), [2], Path("out"))   # doctest: +SKIP
    """
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, chat_template, out)
    save_generation_config(tokenizer, stop_ids, out)
    return sorted(p for p in out.iterdir() if p.is_file())
