"""Recipe models: the YAML a user writes, validated with pydantic (`extra="forbid"`).

This package is a light leaf (pydantic + PyYAML only), so `domaintune validate` answers instantly
and the CLI builds `--help` from the field descriptions without importing torch.

    from domaintune.config import load_recipe
    recipe = load_recipe("recipe.yaml", overrides=["train.learning_rate=1e-4"])

Modules: `base` (Section, YAML with line numbers, error formatting, `field_help`), `prepare`,
`methods` (one options class per method, the `MethodConfig` union), `train` (TrainConfig and the
sections against forgetting), `evaluate` (EvalConfig, CompareConfig), `recipe` (ModelConfig, Recipe, `load_recipe`).
"""

from __future__ import annotations

from domaintune.config.base import Section, field_help
from domaintune.config.evaluate import CompareConfig, EvalConfig
from domaintune.config.methods import (METHOD_NAMES, AdapterOptions, DistillOptions, FreezeOptions, FullOptions,
                                       IA3Options, LoraOptions, MethodConfig, PrefixOptions, PromptOptions,
                                       QLoraOptions)
from domaintune.config.prepare import (ChunkConfig, CleanConfig, DedupConfig, InputSpec, MixConfig, PiiConfig,
                                       PrepareConfig, RegexRule, SplitConfig)
from domaintune.config.retrieval import RetrievalConfig
from domaintune.config.recipe import ModelConfig, Recipe, apply_overrides, load_recipe
from domaintune.config.train import (CurriculumConfig, DistributedConfig, EwcConfig, LayerGroupConfig, ReplayConfig,
                                     StageConfig, TrainConfig)

__all__ = [
    "METHOD_NAMES", "AdapterOptions", "ChunkConfig", "CleanConfig", "CompareConfig", "EvalConfig", "CurriculumConfig", "DedupConfig",
    "DistillOptions", "DistributedConfig", "EwcConfig", "FreezeOptions", "FullOptions", "IA3Options", "InputSpec", "LayerGroupConfig",
    "LoraOptions", "MethodConfig", "MixConfig", "ModelConfig", "PiiConfig", "PrefixOptions", "PrepareConfig",
    "PromptOptions", "QLoraOptions", "Recipe", "RegexRule", "ReplayConfig", "RetrievalConfig", "Section", "SplitConfig",
    "StageConfig", "TrainConfig", "apply_overrides", "field_help", "load_recipe",
]
