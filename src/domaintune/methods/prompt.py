"""Prompt tuning through peft's `PromptTuningConfig`: a trained soft prompt before every input.

    method: prompt
    num_virtual_tokens: 20
    init_text: "Answer as a careful contract lawyer."

With `init_text` the soft prompt starts as the embeddings of that text (peft's
`PromptTuningInit.TEXT`, which tokenizes it with the tokenizer at `tokenizer_path`, by default the
model's own folder). Without it, each virtual token starts as the embedding of a random vocabulary
token (`SAMPLE_VOCAB`), which keeps its scale close to real inputs; peft's `RANDOM` draws N(0, 1),
far larger than a trained model's embeddings.

`merge` returns None: a soft prompt is extra input, not a weight change.
"""

from __future__ import annotations

from pathlib import Path

from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from torch import nn

from domaintune.config import PromptOptions
from domaintune.errors import UserError
from domaintune.methods.base import register
from domaintune.methods.lora import PeftSaved


def prompt_config(model: nn.Module, opts: PromptOptions, tokenizer_path: Path | None) -> PromptTuningConfig:
    """The peft config; text initialization needs a local tokenizer folder."""
    if opts.init_text is None:
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    folder = Path(tokenizer_path or model.name_or_path or "")
    if not (folder / "tokenizer_config.json").is_file():
        raise UserError(f"prompt init_text needs the model's tokenizer folder; '{folder}' has none",
                        hint="pass the tokenizer folder, or drop method.init_text")
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=opts.init_text,
                              tokenizer_name_or_path=str(folder))


class Prompt(PeftSaved):
    """Prompt tuning (Lester et al., 2021)."""

    name = "prompt"

    def apply(self, model: nn.Module, opts: PromptOptions, *, tokenizer_path: Path | None = None) -> nn.Module:
        return get_peft_model(model, prompt_config(model, opts, tokenizer_path))

    def merge(self, model: nn.Module) -> None:
        """None: see the module docstring (a soft prompt is input, not a weight change)."""
        return None


register(Prompt())
