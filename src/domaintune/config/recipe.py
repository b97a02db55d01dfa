"""The whole recipe (`model:`, `prepare:`, `train:`, `eval:`, `compare:`) and `load_recipe`: YAML, flags and `--set`, validated.

    recipe = load_recipe("recipe.yaml", overrides=["prepare.seed=3"])

Every error is reported at once, each with its file, line and a fix, as one `UserError` line.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from domaintune.config.base import Section, deep_merge, format_errors, parse_overrides, read_yaml
from domaintune.config.evaluate import CompareConfig, EvalConfig
from domaintune.config.prepare import PrepareConfig
from domaintune.config.retrieval import RetrievalConfig
from domaintune.config.train import TrainConfig
from domaintune.errors import UserError


EMBEDDED = "embedded"


class ModelConfig(Section):
    name: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a local HF folder, or a .gguf file.")
    template: str = Field("auto", description="Chat template: auto, chatml, deepseek_llm, deepseek_r1, deepseek_v3, "
                                              "tokenizer. 'auto' is the tokenizer's own template, except for the "
                                              "embedded model: plain ChatML, since SmolLM2's own writes a 20-token "
                                              "default system prompt into every row.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the folder (off: safer).")


    @model_validator(mode="after")
    def _embedded_chatml(self) -> ModelConfig:
        # SmolLM2's template is ChatML plus "You are a helpful AI assistant named SmolLM, ..." before
        # every conversation without a system message: a third of a short row's tokens. The run
        # records the resolved name, so eval, serve and export use ChatML too.
        if self.template == "auto" and self.name == EMBEDDED:
            self.template = "chatml"
        return self


class Recipe(Section):
    """A whole recipe: one section per stage. Only `domaintune.api` reads a whole Recipe."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)


def load_recipe(path: str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe from YAML, apply `--set key=value` overrides and validate it.

    Args:
        path: the YAML file, or None for defaults only.
        overrides: strings like "prepare.seed=3" or "prepare.mix.ratios.general=0.3".
        base: values set by CLI flags; the file wins over defaults, flags and overrides win over the file.

    Returns:
        The validated `Recipe`.

    Raises:
        UserError: a missing file, bad YAML, or invalid keys/values (all reported in one line).

    Example:
        >>> load_recipe(None, ["prepare.seed=7"]).prepare.seed
        7
    """
    data, lines = ({}, {}) if path is None else read_yaml(path)
    for source in (base or {}), parse_overrides(overrides or []):
        deep_merge(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(format_errors(err, path, lines, Recipe)) from None


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of `recipe` with `--set` style overrides applied and validated again.

    Example:
        >>> apply_overrides(Recipe(), ["train.learning_rate=0.001"]).train.learning_rate
        0.001
    """
    data = recipe.model_dump(mode="json")
    deep_merge(data, parse_overrides(overrides))
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(format_errors(err, None, {}, Recipe)) from None
