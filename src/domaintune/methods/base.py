"""The fine-tuning method interface: a `Method` Protocol, its registry, and the trainable report.

Each method lives in its own module (`methods/lora.py`, `methods/adapter.py`, ...) and registers one
object with `register(...)`, the way peft's `tuners/ia3/__init__.py` calls `register_peft_method`.
`get_method(name)` imports that module on first use, so `--help` and `validate` never pay for peft.

    method = get_method("lora")
    model = method.apply(model, LoraOptions())
    ...train...
    method.save(model, out_dir)          # only what was trained, plus method.json
    print(trainable_report(model))       # trainable 1.2M / 135M (0.91%)

Every `save` writes `method.json` ({"method": name, ...}) next to its weights, so a later command
can call `get_method(saved_method(folder)).load(base, folder)` without being told the method.
"""

from __future__ import annotations

import difflib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from safetensors.torch import load_file, save_file
from torch import nn

from domaintune.config import METHOD_NAMES
from domaintune.errors import UserError

METHOD_FILE = "method.json"
WEIGHTS_FILE = "weights.safetensors"


class Method(Protocol):
    """What every fine-tuning method provides. An interface, not a vehicle for code reuse.

    Attributes:
        name: the recipe's `method:` value, e.g. "lora".
    """

    name: str

    def apply(self, model: Any, opts: Any, *, tokenizer_path: Path | None = None) -> nn.Module:
        """Return the model ready to train: peft-wrapped, or with `requires_grad` set."""
        ...

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """Write only the trained weights (safetensors) and their JSON config into `out_dir`."""
        ...

    def load(self, base_model: nn.Module, out_dir: Path) -> nn.Module:
        """Return `base_model` with the weights `save` wrote into `out_dir`."""
        ...

    def merge(self, model: nn.Module) -> nn.Module | None:
        """Return a plain model with the method folded in, or None when it cannot be folded."""
        ...


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to `REGISTRY` under its name (each method module calls this once)."""
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`, importing its module on first use.

    Args:
        name: one of `METHOD_NAMES`.

    Returns:
        The method object.

    Raises:
        UserError: the name is not a known method.

    Example:
        >>> get_method("lora").name
        'lora'
    """
    if name not in METHOD_NAMES:
        close = difflib.get_close_matches(name, METHOD_NAMES, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown method '{name}'", hint=f"{guess}use one of: {', '.join(METHOD_NAMES)}")
    if name not in REGISTRY:
        importlib.import_module(f"domaintune.methods.{name}")
    return REGISTRY[name]


def all_methods() -> dict[str, Method]:
    """Every method, keyed by name (imports all method modules)."""
    return {name: get_method(name) for name in METHOD_NAMES}


@dataclass(frozen=True)
class TrainableReport:
    """How much of a model is trained.

    Attributes:
        trainable: parameters with `requires_grad`.
        total: all parameters (shared tensors such as tied embeddings counted once).
    """

    trainable: int
    total: int

    @property
    def share(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {_human(self.trainable)} / {_human(self.total)} ({self.share:.2f}%)"


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable and total parameters.

    Args:
        model: any torch model, peft-wrapped or not.

    Returns:
        The counts; `str()` gives e.g. "trainable 1.2M / 135M (0.91%)".
    """
    trainable = total = 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte
            count *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        total += count
        trainable += count if param.requires_grad else 0
    return TrainableReport(trainable, total)


def _human(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


# ---- shared helpers for the methods' save/load --------------------------------------------------

def write_method_file(out_dir: Path, name: str, **settings: Any) -> None:
    """Write `method.json` ({"method": name, **settings}) into `out_dir`, creating it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"method": name, **settings}
    (out_dir / METHOD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_method_file(out_dir: Path) -> dict[str, Any]:
    """The `method.json` record of a saved folder.

    Raises:
        UserError: the folder holds no `method.json` (it was not written by a method's `save`).
    """
    path = Path(out_dir) / METHOD_FILE
    if not path.is_file():
        raise UserError(f"'{out_dir}' holds no {METHOD_FILE}", hint="point at a folder written by `domaintune train`")
    return json.loads(path.read_text(encoding="utf-8"))


def saved_method(out_dir: Path) -> str:
    """The name of the method that saved `out_dir`, e.g. "lora"."""
    return read_method_file(out_dir)["method"]


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """A few config facts that identify the base model a folder was trained on."""
    config = model.config.get_text_config()
    return {key: getattr(config, key, None) for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}


def check_base(model: nn.Module, record: dict[str, Any]) -> None:
    """Raise a UserError when `model` is not the kind of base `record` (a method.json) was saved from."""
    saved, here = record.get("base") or {}, base_fingerprint(model)
    diff = [f"{k} {saved[k]} != {here[k]}" for k in saved if saved[k] != here.get(k)]
    if diff:
        raise UserError(f"saved weights are for another base model ({', '.join(diff)})",
                        hint="load onto the same base model the folder was trained from")


def save_trained(model: nn.Module, out_dir: Path, names: list[str]) -> None:
    """Save the named parameters of `model` to `out_dir/weights.safetensors`."""
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().contiguous().cpu() for n in names}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(out_dir) / WEIGHTS_FILE), metadata={"format": "pt"})


def load_trained(model: nn.Module, out_dir: Path) -> set[str]:
    """Copy `out_dir/weights.safetensors` into `model` in place; returns the names loaded.

    Raises:
        UserError: a tensor has no place in the model, or the wrong shape (saved from another model).
    """
    state = load_file(str(Path(out_dir) / WEIGHTS_FILE))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(f"saved weights do not fit this model: {str(err).splitlines()[-1].strip()}",
                        hint="load onto the same base model the folder was trained from") from None
    if result.unexpected_keys:
        raise UserError(f"saved weights name parameters this model lacks: {', '.join(result.unexpected_keys[:3])}",
                        hint="load onto the same base model the folder was trained from")
    return set(state)


def load_into(model: nn.Module, folder: Path) -> int:
    """Copy a saved folder's trained weights into `model`, the same method freshly applied to the same
    base (`train.init_from`); returns how many tensors were loaded.

    Raises:
        UserError: the folder holds no trained weights, or they do not fit `model`.
    """
    folder = Path(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return len(load_trained(model, folder))
    adapter = folder / "adapter_model.safetensors"
    if not adapter.is_file():
        raise UserError("no trained weights here (neither weights.safetensors nor adapter_model.safetensors)",
                        file=str(folder), hint="give a run folder written by `domaintune train`")
    from peft import set_peft_model_state_dict

    state = load_file(str(adapter))
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as err:  # a shape mismatch: another rank, other target modules
        raise UserError(f"the saved adapter does not fit this one: {str(err).splitlines()[-1].strip()[:200]}",
                        file=str(folder), hint="use the same method options (rank, target modules) as that run") from None
    if result.unexpected_keys:
        raise UserError(f"the saved adapter has tensors this one lacks: {', '.join(result.unexpected_keys[:2])}",
                        file=str(folder), hint="use the same method options (rank, target modules) as that run")
    return len(state)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a (possibly peft-wrapped) causal LM, found through `models.arch`."""
    from domaintune.models.arch import arch_facts

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = inner.get_submodule(arch_facts(inner.config, inner).layers_path)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"cannot find the decoder layers of '{inner.config.model_type}'",
                        hint="use a llama, qwen2, qwen3, mistral or deepseek_v3 model")
    return layers
