"""Recipe sections for `domaintune eval` and `domaintune compare`.

    eval:
      data: demo_out/data/test.jsonl
      label_field: label        # metadata key: label accuracy / F1 on the generations
      few_shot: 3               # a prompting baseline: 3 training examples before each prompt
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from domaintune.config.base import Section


class EvalConfig(Section):
    data: str = Field("prepared/test.jsonl", description="Held-out prepared JSONL to evaluate on.")
    output_dir: str = Field("runs/eval", description="Report folder: report.json, predictions.jsonl, report.html.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate only the first N examples (quick checks).")
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Longest generated answer in tokens.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy (reproducible); above 0 samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    few_shot: int = Field(0, ge=0, le=32, description="Training examples put before each prompt (0: zero-shot).")
    few_shot_by: Literal["random", "similar"] = Field("random", description="How few-shot examples are chosen.")
    few_shot_pool: str | None = Field(None, description="Few-shot examples (default: train.jsonl beside the data).")
    label_field: str | None = Field(None, description="Metadata key with each record's label: accuracy and F1.")
    closed_set: Literal["auto", "off"] = Field(
        "auto", description="'auto': when the answers form a closed set (the set a run recorded, or for a base "
                            "model the one its few-shot pool forms), decode only answers of that set and report "
                            "each one's probability as its confidence; 'off': decode freely.")
    neighbour_prior: bool = Field(True, description="Mix in the run's neighbour prior (train.neighbour_prior) with "
                                                    "its recorded weight; false: the model alone.")
    text_metrics: bool = Field(True, description="BLEU, chrF and ROUGE on the generations.")
    baselines: bool = Field(True, description="Score classic baselines fitted on the training split beside the "
                                              "model (majority answer, TF-IDF + logistic regression for closed "
                                              "answer sets, nearest training answer), with paired p-values.")
    perplexity: bool = Field(True, description="Perplexity on the reference answers (zero-shot context).")
    json_fields: bool = Field(False, description="Field-level F1 for answers that are JSON objects.")
    general: str | None = Field("bundled:general_reference.jsonl",
                                description="General conversations for the forgetting figures (None: skip).")
    general_max: int = Field(64, ge=1, description="General conversations used for forgetting.")
    leak_check: bool = Field(True, description="Look for training text repeated verbatim and PII in outputs.")
    latency_prompts: int = Field(3, ge=0, description="Single requests timed for latency (0: skip).")
    latency_tokens: int = Field(200, ge=1, description="Tokens generated per latency request.")
    max_len: int = Field(1024, ge=8, description="Tokens per record for perplexity and forgetting.")
    seed: int = Field(0, description="Seed for few-shot choice and sampling.")


class CompareConfig(Section):
    metrics: list[str] | None = Field(None, description="Metrics to test (default: every per-example metric).")
    bootstrap: int = Field(10000, ge=100, description="Paired bootstrap resamples.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level for the demo's pass/fail line.")
