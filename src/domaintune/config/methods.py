"""The fine-tuning methods' options: one small class per method, joined on the `method:` key.

    method: {method: lora, r: 8}        # LoraOptions(r=8)
    method: {method: distill, teacher: embedded, kd_weight: 0.7}

`MethodConfig` is the discriminated union the `train.method` field holds; `METHOD_NAMES` lists
the methods in registry order (`domaintune.methods.base` checks names against it).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from domaintune.config.base import Section


class LoraOptions(Section):
    method: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt; 'all-linear': every attention and MLP linear of the architecture.")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA scaling.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    layers: str = Field("top:33%", description="Decoder layers to adapt: 'top:33%' (the top third), 'all', 'top:K', "
                                               "'bottom:K', 'middle', '0-3' or '4,5,7'. With only the top layers "
                                               "adapted, the frozen layers below run once per example "
                                               "(train.cache_frozen) and no backward pass goes below them.")


class QLoraOptions(Section):
    method: Literal["qlora"] = "qlora"
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (bitsandbytes).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Matmul dtype.")


class PrefixOptions(Section):
    method: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, description="Trained key/value prefix length per layer.")
    prefix_projection: bool = Field(False, description="Reparametrize the prefix through an MLP.")


class PromptOptions(Section):
    method: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, description="Trained soft-prompt length.")
    init_text: str | None = Field(None, description="Initialize the soft prompt from this text's embeddings.")


class IA3Options(Section):
    method: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="Modules to scale (default: k, v and down projections).")
    feedforward_modules: list[str] | None = Field(None, description="Which targets are feed-forward (scaled on input).")


class AdapterOptions(Section):
    method: Literal["adapter"] = "adapter"
    bottleneck: int = Field(64, ge=1, description="Bottleneck width of each adapter.")
    places: list[Literal["attention", "mlp"]] = Field(
        default_factory=lambda: ["attention", "mlp"], description="Insert adapters after attention and/or MLP.")
    activation: Literal["relu", "gelu", "silu"] = Field("gelu", description="Bottleneck non-linearity.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the adapter.")


class FullOptions(Section):
    method: Literal["full"] = "full"


class FreezeOptions(Section):
    method: Literal["freeze"] = "freeze"
    freeze_first: int | None = Field(None, ge=0, description="Freeze the embeddings and the first N layers.")
    train_top: int | None = Field(None, ge=1, description="Train only the top K layers (and the head).")
    train_head: bool = Field(True, description="Train the final norm and LM head.")

    @model_validator(mode="after")
    def _one_of(self) -> FreezeOptions:
        if (self.freeze_first is None) == (self.train_top is None):
            raise ValueError("set exactly one of freeze_first or train_top")
        return self


class DistillOptions(Section):
    method: Literal["distill"] = "distill"
    teacher: str = Field(..., description="Teacher model: 'embedded', a local HF folder or a .gguf file.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature for teacher and student logits.")
    kd_weight: float = Field(0.5, ge=0, le=1, description="Share of the KL term: loss = w*T^2*KL + (1-w)*CE.")
    student: Literal["lora", "full"] = Field("lora", description="How the student is trained.")
    r: int = Field(16, ge=1, description="LoRA rank of the student (student: lora).")
    alpha: int = Field(32, ge=1, description="LoRA alpha of the student.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout of the student.")
    target_modules: list[str] | None = Field(None, description="LoRA targets (default: all linear layers).")


MethodConfig = Annotated[
    Union[LoraOptions, QLoraOptions, PrefixOptions, PromptOptions, IA3Options, AdapterOptions, FullOptions,
          FreezeOptions, DistillOptions],
    Field(discriminator="method"),
]
METHOD_NAMES = ("lora", "qlora", "prefix", "prompt", "ia3", "adapter", "full", "freeze", "distill")
