"""A finished training run as export reads it: the base model, the template, and what was trained.

`domaintune train` writes `RUN_DIR/recipe.resolved.yaml` (whose `model.name` and `model.template`
name the base and the chat template) and the artifact: `RUN_DIR/adapter/` for adapter methods
(PEFT format, or weights plus `method.json` for the bottleneck adapter) or `RUN_DIR/model/` for
`full` and `freeze`. Each saved folder's `method.json` names the method that can load it.

    run = open_run("runs/demo")
    tuned = load_tuned(run)       # base + adapter, as in training (the parity reference)
    merged = load_merged(run)     # a plain transformers model with the update folded in
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.methods.artifact import KINDS as ARTIFACT_DIRS
from domaintune.methods.artifact import RECIPE_FILE
from domaintune.models.load import PEFT_CONFIG



@dataclass(frozen=True)
class TrainedRun:
    """What export needs to know about a training run.

    Attributes:
        run_dir: the run folder.
        base: the base-model spec from the recipe ("embedded", a folder or a .gguf).
        template_name: the recipe's chat template name ("auto", "chatml", ...).
        trust_remote_code: the user's setting (not the recipe's), passed on to every load.
        method: the saved method's name, e.g. "lora".
        artifact: the saved folder (`RUN_DIR/adapter` or `RUN_DIR/model`).
    """

    run_dir: Path
    base: str
    template_name: str
    trust_remote_code: bool
    method: str
    artifact: Path

    @property
    def is_peft(self) -> bool:
        """Whether the artifact is a PEFT adapter folder (adapter_config.json)."""
        return (self.artifact / PEFT_CONFIG).is_file()


def open_run(run_dir: str | os.PathLike[str], trust_remote_code: bool = False) -> TrainedRun:
    """Read a run folder's recipe and find its trained artifact.

    Args:
        run_dir: the folder `domaintune train` wrote, or its `adapter/` or `model/` folder.
        trust_remote_code: the user's own choice (`--trust-remote-code`); never taken from the run's
            recipe, since a run folder from elsewhere could otherwise run its code on this machine.

    Returns:
        The run's facts; nothing heavy is loaded.

    Raises:
        UserError: the folder, its recipe or its adapter/model folder is missing.

    Example:
        >>> open_run("runs/demo").method   # doctest: +SKIP
        'lora'
    """
    from domaintune.config import load_recipe
    from domaintune.methods.base import saved_method

    folder = Path(run_dir).expanduser()
    if folder.name in ARTIFACT_DIRS and (folder.parent / RECIPE_FILE).is_file():
        folder = folder.parent  # `runs/demo/adapter` stands for its run, as eval and serve read it
    if not folder.is_dir():
        raise UserError(f"run folder '{folder}' not found", hint="pass the train.output_dir of a finished run")
    recipe_path = folder / RECIPE_FILE
    if not recipe_path.is_file():
        raise UserError(f"'{folder}' holds no {RECIPE_FILE}", hint="pass a folder written by `domaintune train`")
    artifact = next((folder / name for name in ARTIFACT_DIRS if (folder / name).is_dir()), None)
    if artifact is None:
        raise UserError(f"'{folder}' holds neither adapter/ nor model/: the run has not saved its result",
                        hint="let `domaintune train` finish, or resume it with --resume")
    recipe = load_recipe(str(recipe_path))
    return TrainedRun(folder, recipe.model.name, recipe.model.template, trust_remote_code,
                      saved_method(artifact), artifact)


def base_folder(run: TrainedRun) -> Path:
    """The local Hugging Face folder of the run's base model (converted once for GGUF specs)."""
    from domaintune.models.load import resolve_model

    return resolve_model(run.base)


def load_tokenizer_and_template(run: TrainedRun) -> tuple[Any, Any]:
    """The base tokenizer and the chat template used in training."""
    from domaintune.models.load import load_tokenizer
    from domaintune.models.templates import get_template

    tokenizer = load_tokenizer(run.base, trust_remote_code=run.trust_remote_code)
    return tokenizer, get_template(run.template_name, tokenizer)


def load_tuned(run: TrainedRun) -> Any:
    """The base model with the trained artifact loaded, unmerged, in eval mode (float32).

    This is the model training validated, so every export's parity check compares against it.
    """
    from domaintune.methods.base import get_method
    from domaintune.models.load import load_model

    base = load_model(run.base, trust_remote_code=run.trust_remote_code)
    return get_method(_loading_method(run.method)).load(base, run.artifact).eval()


def load_merged(run: TrainedRun) -> Any:
    """A plain transformers model with the trained update folded into the weights (float32, eval).

    Raises:
        UserError: the method cannot be folded into the weights (prefix, prompt, bottleneck
            adapter): those are served as adapters.
    """
    from domaintune.methods.base import get_method

    merged = get_method(_loading_method(run.method)).merge(load_tuned(run))
    if merged is None:
        raise UserError(f"method '{run.method}' cannot be merged into the base weights",
                        hint="export it with --format adapter and serve it with `domaintune serve --adapter`")
    return merged.eval()


def _loading_method(method: str) -> str:
    # A QLoRA folder is a plain LoRA adapter; its own merge refuses 4-bit weights, so load and merge
    # it onto the full-precision base with `lora`, as methods/qlora.py advises.
    return "lora" if method == "qlora" else method
