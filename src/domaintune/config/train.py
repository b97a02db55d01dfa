"""The `train:` section: method, optimisation, batching, checkpoints, and the guards against forgetting.

    train:
      method: {method: lora, r: 16}
      replay: {data: bundled:general.jsonl, ratio: 0.2}     # mix general records in
      ewc: {reference: general/val.jsonl, weight: 100}     # anchor weights that matter there
      curriculum: {by: metadata.difficulty, order: [easy, medium, hard]}
      stages: [{data_dir: general_prepared, epochs: 1}, {data_dir: prepared}]
      terms: terms.csv                                     # term-aware loss
      term_weight: 2.0
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from domaintune.config.base import Section
from domaintune.config.methods import LoraOptions, MethodConfig

LENGTH = "length"
METADATA_PREFIX = "metadata."
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1.5h' or '300' (seconds) as seconds.

    Example:
        >>> parse_duration("15m"), parse_duration("90s"), parse_duration("2h"), parse_duration("300")
        (900.0, 90.0, 7200.0, 300.0)
    """
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", text)
    if not match:
        raise ValueError(f"'{text}' is not a duration; write e.g. 90s, 15m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class LayerGroupConfig(Section):
    name: str = Field(description="Group name, shown in logs.")
    layers: str = Field(description="Layers: '0-3', '4,5,7', 'bottom:2', 'middle', 'top:3' or 'all'.")
    lr_scale: float = Field(1.0, gt=0, description="Learning-rate multiplier for this group.")
    max_grad_norm: float | None = Field(None, gt=0, description="Gradient clipping for this group.")


class ReplayConfig(Section):
    data: str = Field(description="General records to replay, in prepared JSONL format ('bundled:NAME' for a "
                                  "dataset shipped with domaintune).")
    ratio: float = Field(0.2, gt=0, description="Replay records per domain record: round(ratio * domain records) "
                                                "are drawn with the seed (with replacement only when the file has "
                                                "fewer), once for the whole run.")


class EwcConfig(Section):
    reference: str = Field(description="Reference records (prepared JSONL, e.g. general data) whose Fisher "
                                       "information marks the weights that matter for what the model knew.")
    weight: float = Field(100.0, ge=0, description="EWC strength lambda: each step's loss gains "
                                                   "lambda/2 * sum(F * (theta - theta_start)^2).")
    samples: int = Field(64, ge=1, description="Reference examples for the Fisher (squared gradients of each "
                                               "example's token-mean loss, averaged).")


class CurriculumConfig(Section):
    by: str = Field("metadata.difficulty", description="'metadata.<field>' (buckets named in `order`) or "
                                                       "'length' (shortest tokens first).")
    order: list[str | int] = Field(default_factory=lambda: ["easy", "medium", "hard"],
                                   description="Bucket values in training order (by: metadata.<field>); "
                                               "records without the field or with another value go last.")
    length_buckets: int = Field(3, ge=1, description="by: length: equal-size length buckets, shortest first.")

    @field_validator("by")
    @classmethod
    def _known_key(cls, value: str) -> str:
        if value != LENGTH and not (value.startswith(METADATA_PREFIX) and len(value) > len(METADATA_PREFIX)):
            raise ValueError("curriculum.by must be 'length' or 'metadata.<field>', e.g. metadata.difficulty")
        return value

    @model_validator(mode="after")
    def _order_for_metadata(self) -> CurriculumConfig:
        if self.by != LENGTH and not self.order:
            raise ValueError("curriculum.order must list the bucket values, e.g. [easy, medium, hard]")
        return self


class StageConfig(Section):
    data_dir: str | None = Field(None, description="Prepared data of this stage (default: train.data_dir).")
    epochs: float | None = Field(None, gt=0, description="Passes over this stage's data (default: train.epochs; "
                                                         "setting it drops an inherited train.max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps of this stage (default: train.max_steps).")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate of this stage "
                                                                "(default: train.learning_rate).")


class DistributedConfig(Section):
    """How several processes (torchrun / accelerate launch) share the model; ignored with one process."""

    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="ddp: every process holds all the weights, gradients are summed (FSDP2's replicated "
                           "mesh); fsdp2: parameters, gradients and optimizer states are sharded over the processes "
                           "(torch's fully_shard, each decoder layer one unit, then the root).")
    reshard_after_forward: bool = Field(True, description="fsdp2: free each layer's gathered weights after its "
                                                          "forward (less memory, one more all-gather in backward).")
    cpu_offload: bool = Field(False, description="fsdp2: keep the shards, their gradients and the optimizer step on "
                                                 "the CPU (torch's CPUOffloadPolicy).")


class TrainConfig(Section):
    data_dir: str = Field("prepared", description="Output folder of `prepare` (train.jsonl, val.jsonl).")
    output_dir: str = Field("runs/run", description="Run folder: adapter or model, checkpoints, metrics, plots.")
    method: MethodConfig = Field(default_factory=LoraOptions, description="Fine-tuning method and its options.")
    epochs: float | Literal["auto"] = Field(
        "auto", description="Passes over the training data (ignored when max_steps is set); 'auto': about 6,000 "
                            "examples seen, at least 1 and at most 8 passes (train/plan.py).")
    time_budget: float | None = Field(
        None, gt=0, description="Wall-time cap of the training loop in seconds, or '90s', '15m', '2h': the schedule "
                                "is fitted to it after the first steps (--time-budget).")
    select_by: Literal["auto", "loss", "accuracy", "macro_f1", "exact_match", "chrf"] = Field(
        "auto", description="What picks the best checkpoint and drives early stopping: validation loss, or the "
                            "task's metric on validation answers; 'auto': accuracy when the answers form a closed set "
                            "(read off the loss pass: greedy closed-set decoding's accuracy), else loss.")
    val_samples: int = Field(200, ge=1, description="Validation rows decoded for a task metric (select_by); "
                                                    "closed-set accuracy needs no decoding and uses every row.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run (overrides epochs).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (docs/quality.md: the default "
                                                         "measured across the benchmark's tasks).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps for linear warm-up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: off).")
    layer_groups: list[LayerGroupConfig] = Field(default_factory=list, description="Per-layer-group LR and clipping.")
    max_len: int = Field(1024, ge=8, description="Longest example in tokens.")
    truncation: Literal["drop", "truncate"] = Field("drop", description="Longer examples: drop them or cut them.")
    packing: bool = Field(True, description="Pack several examples into one row without padding.")
    batch_tokens: int = Field(512, ge=8, description="Tokens per packed row (micro-batch); short rows keep the "
                                                     "attention cost per token low.")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch when packing is off.")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    train_on_prompt: bool = Field(False, description="Also train on system/user tokens (default: answers only).")
    closed_set_loss: bool = Field(True, description="When the answers form a closed set, add to the token loss the "
                                                    "cross-entropy of each choice among the tokens the set allows "
                                                    "there, as constrained decoding picks (train/closed_set.py).")
    neighbour_prior: bool = Field(True, description="When the answers form a closed set, index the training pairs "
                                                    "and mix the answers of a question's nearest pairs into the "
                                                    "decoding of eval and serve, with a weight chosen on validation "
                                                    "(0 when it does not help; models/prior.py).")
    keep_reasoning: bool = Field(True, description="Keep <think> reasoning in R1 training targets.")
    eval_every: int | Literal["auto"] = Field(
        "auto", description="Validate every N optimizer steps; 'auto': about 6 times per run.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints to keep (the best one is always kept).")
    early_stopping_patience: int | None = Field(3, ge=1, description="Stop after N validations without improvement.")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune embedding-noise strength (off by default).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    cache_frozen: bool = Field(True, description="When only the top layers train, compute the frozen layers below "
                                                 "them once per example instead of once per epoch (where exact: "
                                                 "train/frozen.py; under a time_budget only when the build leaves "
                                                 "more steps, never for runs seeing their examples under 1.5 "
                                                 "times).")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    init_from: str | None = Field(None, description="A finished run (or its adapter/model folder) of the same method "
                                                    "and base whose trained weights this run starts from: an "
                                                    "adapter updated on new data, not retrained from scratch "
                                                    "(with train.replay of the old data against forgetting).")
    replay: ReplayConfig | None = Field(None, description="Against forgetting: mix general records into training.")
    ewc: EwcConfig | None = Field(None, description="Against forgetting: elastic weight consolidation (EWC) "
                                                    "toward the weights each stage starts from.")
    curriculum: CurriculumConfig | None = Field(
        None, description="Order of the first epoch: bucket by bucket (shuffled and packed inside each); "
                          "later epochs are shuffled as usual.")
    stages: list[StageConfig] = Field(
        default_factory=list, description="Train in stages (e.g. general data, then domain data); the model "
                                          "carries over, each stage writes run_dir/stage-N.")
    terms: str | None = Field(None, description="Terminology dictionary (CSV canonical,variant or YAML) for the "
                                                "term-aware loss.")
    term_weight: float = Field(2.0, gt=0, description="Loss weight of the tokens of dictionary terms "
                                                      "(train.terms); other tokens weigh 1.")

    domains: list[str] = Field(default_factory=list, description="Multi-domain: one adapter per domain tag, "
                               "trained in one run on the records whose metadata field `domain_field` names it, "
                               "saved side by side as adapters/<domain>/ for the server's router.")
    domain_field: str = Field("domain", description="Metadata key holding each record's domain tag (with domains).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="Several processes: data parallel or FSDP2 sharding.")

    @field_validator("epochs", mode="before")
    @classmethod
    def _positive_epochs(cls, value: Any) -> Any:
        if value != "auto" and isinstance(value, (int, float)) and value <= 0:
            raise ValueError("train.epochs must be above 0, or 'auto'")
        return value

    @field_validator("eval_every")
    @classmethod
    def _positive_every(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("train.eval_every must be at least 1, or 'auto'")
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("method", mode="before")
    @classmethod
    def _default_method(cls, value: Any) -> Any:
        # `--set train.method.r=8` alone means LoRA options, the default method.
        if isinstance(value, dict) and "method" not in value:
            return {"method": "lora", **value}
        return value

    @model_validator(mode="after")
    def _term_weight_needs_terms(self) -> TrainConfig:
        # Compared with the default, not "was it set": a dumped recipe (recipe.resolved.yaml) sets every key.
        if self.terms is None and self.term_weight != TrainConfig.model_fields["term_weight"].default:
            raise ValueError("train.term_weight needs train.terms (the terminology dictionary)")
        return self

    @model_validator(mode="after")
    def _domains_alone(self) -> TrainConfig:
        if self.domains and self.stages:
            raise ValueError("train.domains and train.stages cannot be combined; run the stages per domain "
                             "in separate recipes")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("train.domains lists a domain twice")
        for name in self.domains:  # each becomes a folder name of the run (and is replaced on re-runs)
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
                raise ValueError(f"train.domains: {name!r} is not a plain folder name (letters, digits, '.', '_', "
                                 "'-'; no '/', no '..')")
        return self

    def stage_configs(self) -> list[TrainConfig]:
        """This section once per stage, each stage's overrides applied (just itself without stages).

        A stage that sets `epochs` but not `max_steps` runs by epochs, whatever train.max_steps says.

        Example:
            >>> cfg = TrainConfig(max_steps=9, stages=[StageConfig(epochs=1), StageConfig(learning_rate=1e-5)])
            >>> [(s.max_steps, s.learning_rate) for s in cfg.stage_configs()]
            [(None, 0.001), (9, 1e-05)]
        """
        if not self.stages:
            return [self]
        out = []
        for stage in self.stages:
            update = stage.model_dump(exclude_none=True)
            if stage.epochs is not None and stage.max_steps is None:
                update["max_steps"] = None
            out.append(self.model_copy(update={**update, "stages": []}))
        return out
