"""The served models: one base, any number of trained adapters, each picked by NAME.

`load_served(model, {"support": "runs/support", "legal": "runs/legal/adapter"})` loads the base once
and every LoRA adapter onto it with peft's multi-adapter support (`load_adapter(path,
adapter_name=...)`); a batch activates one of them with `set_adapter`, or none with
`disable_adapter()` for the base. Adapters peft cannot stack on a shared LoRA base (IA3, prefix
and prompt tuning, bottleneck adapters, full or freeze fine-tunes) each get their own copy of the
base, loaded through their method's `load`, so every method `train` writes can be served.

A path may be a run folder (holding `adapter/` or `model/`), the artifact folder itself (with
`method.json`), or a plain PEFT folder (`adapter_config.json`, as `export --format adapter` writes).
Requests name models, never paths: names are checked here (letters, digits, `._:-`).

    >>> served = load_served("embedded", {"support": "runs/support"})  # doctest: +SKIP
    >>> served.names                                                   # doctest: +SKIP
    ['embedded', 'support']
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domaintune.errors import UserError
from domaintune.methods.artifact import find_artifact
from domaintune.methods.base import METHOD_FILE, get_method, read_method_file
from domaintune.models.load import PEFT_CONFIG, check_adapter_folder, load_model, load_tokenizer
from domaintune.models.templates import ChatTemplate, get_template
from domaintune.serve.codec import Codec
from domaintune.serve.knowledge import ChoiceTries, Knowledge, Prior, run_extras

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True)
class Route:
    """How to run one served name.

    Attributes:
        model: the model object (the shared LoRA model, the base, or an adapter's own copy).
        adapter: the peft adapter to `set_adapter` inside a shared model, or None.
        disable: run the shared model with its adapters disabled (the base, once LoRA is stacked).
        labels: the closed answer set the adapter's run recorded (`serve.knowledge`), or None.
        knowledge: the knowledge base its run trained with, or None.
        prior: its run's neighbour prior, mixed in when a request decodes inside `labels`, or None.
    """

    model: Any = field(repr=False)
    adapter: str | None = None
    disable: bool = False
    labels: tuple[str, ...] | None = None
    knowledge: Knowledge | None = field(default=None, repr=False)
    prior: Prior | None = field(default=None, repr=False)


@dataclass
class ServedModels:
    """Everything the server decodes with: the models by name, and how to render prompts.

    Attributes:
        base_name: the name under which the base model is served.
        tokenizer: the base model's tokenizer (adapters share it).
        template: the chat template training used.
        codec: prompt encoding and stop ids for that tokenizer and template.
        max_context: the most tokens (prompt plus reply) a request may use.
        routes: served name -> `Route`, the base first.
        default_temperature: used when a request gives none (the model's generation config,
            else OpenAI's 1.0).
        default_top_p: likewise for top_p.
    """

    base_name: str
    tokenizer: Any
    template: ChatTemplate
    codec: Codec
    max_context: int
    routes: dict[str, Route] = field(default_factory=dict, repr=False)
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    tries: ChoiceTries | None = field(default=None, repr=False)
    guard: tuple[str, ...] = field(default=(), repr=False)  # what no message may carry (models.codec)
    shadows: dict[str, str] = field(default_factory=dict)  # served name -> its hidden shadow candidate's route

    def __post_init__(self) -> None:
        from domaintune.models.codec import guard_tokens

        if self.tries is None:
            self.tries = ChoiceTries(self.template, self.tokenizer)
        if not self.guard:
            self.guard = guard_tokens(self.template, self.tokenizer)

    @property
    def names(self) -> list[str]:
        """The served names: the base first, then the adapters in the order given (shadow
        candidates are not served: they answer only `serve/shadow.py`'s copies)."""
        hidden = set(self.shadows.values())
        return [name for name in self.routes if name not in hidden]

    @functools.cached_property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: those both the tokenizer and every served model's input
        embedding know (a padded embedding has rows no token has; a tokenizer may have added
        tokens the embedding lacks, which would fail inside the model). Computed once: the routes
        are fixed when the server loads."""
        rows = [route.model.get_input_embeddings().num_embeddings for route in self.routes.values()]
        return min([len(self.tokenizer), *rows])

    @contextlib.contextmanager
    def activate(self, name: str) -> Iterator[Any]:
        """Make `name` the active model for the duration of the block and yield it.

        Raises:
            KeyError: `name` is not served (the HTTP layer checks names before this).
        """
        route = self.routes[name]
        if route.adapter is not None:
            route.model.set_adapter(route.adapter)
        if route.disable:
            with route.model.disable_adapter():
                yield route.model
        else:
            yield route.model


def check_name(name: str) -> str:
    """Return `name` if it is a valid served name (letters, digits, `._:-`; never a path).

    Raises:
        UserError: otherwise.
    """
    if not NAME_RE.fullmatch(name):
        raise UserError(f"'{name}' is not a valid model name",
                        hint="use letters, digits and ._:- (at most 64 characters), e.g. --adapter support=runs/support")
    return name


def load_served(model: str = "embedded", adapters: Mapping[str, str | Path] | None = None, *,
                template: str = "auto", base_name: str | None = None, max_context: int | None = None,
                dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                kb_changed_ok: bool = False, shadows: Mapping[str, str | Path] | None = None) -> ServedModels:
    """Load a base model and its adapters for serving.

    Args:
        model: "embedded", a model folder or a .gguf file (as `models.load.load_model`).
        adapters: served name -> run folder, artifact folder or PEFT folder.
        template: the chat template name training used (`models.templates.TEMPLATE_NAMES`);
            "auto" takes the one the adapters' runs recorded (`serving_template`).
        base_name: the name the base is served under (default: "embedded" or the folder's name).
        max_context: cap on prompt plus reply tokens (default: the model's
            `max_position_embeddings`).
        dtype: parameter dtype.
        trust_remote_code: allow model folders' own code to run.
        kb_changed_ok: serve an adapter whose knowledge base changed since its training.
        shadows: served name -> a candidate run that answers copies of its requests unseen
            (`serve/shadow.py`); loaded as a hidden route `NAME:shadow`.

    Returns:
        The `ServedModels`, every model in eval mode.

    Raises:
        UserError: a bad name, a missing or unrecognised folder, or an adapter that does not fit
            the base.

    Example:
        >>> load_served("embedded", {"support": "runs/support"}).names   # doctest: +SKIP
        ['embedded', 'support']
    """
    adapters = dict(adapters or {})
    base_name = base_name or default_base_name(model)
    check_names(base_name, adapters)
    unknown = sorted(set(shadows or {}) - {base_name, *adapters})
    if unknown:
        raise UserError(f"--shadow names {', '.join(unknown)}, which is not served",
                        hint=f"shadow a served name: {', '.join([base_name, *adapters])}")
    hidden = {name: shadow_route(name) for name in shadows or {}}
    adapters.update({hidden[name]: path for name, path in (shadows or {}).items()})
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    tpl = get_template(serving_template(template, adapters.values()), tokenizer)

    def fresh_base() -> Any:
        return load_model(model, dtype=dtype, trust_remote_code=trust_remote_code).eval()

    shared = fresh_base()
    temperature, top_p = sampling_defaults(shared)
    context = max_context or context_length(shared)
    routes: dict[str, Route] = {}
    for name, path in adapters.items():
        folder = artifact_folder(path)
        recorded = run_extras(folder, kb_changed_ok)
        extras = {"labels": recorded.labels, "knowledge": recorded.knowledge, "prior": recorded.prior}
        if is_lora(folder):
            shared = _stack_lora(shared, folder, name)
            routes[name] = Route(shared, adapter=name, **extras)
        else:
            routes[name] = Route(_own_copy(fresh_base(), folder, name), **extras)
    # Once LoRA is stacked, the base is the shared peft model with its adapters disabled.
    base = Route(shared, disable=hasattr(shared, "peft_config"))
    served = ServedModels(base_name, tokenizer, tpl, Codec(tokenizer, tpl), context, {base_name: base, **routes},
                          temperature, top_p)
    for route in routes.values():  # a run's own answer set is built once, here, not per request
        if route.labels:
            served.tries.pin(route.labels)
    served.shadows = hidden
    return served


def shadow_route(name: str) -> str:
    """The hidden route of `name`'s shadow candidate (":" keeps it apart from every served name)."""
    return f"{name}:shadow"


def serving_template(requested: str, adapters: Iterable[str | Path]) -> str:
    """The template to serve with: `requested`, or for "auto" the one the adapters were trained with.

    A run records its template in recipe.resolved.yaml (`methods.artifact.find_artifact`); serving
    an adapter with another template is the train/serve mismatch that quietly degrades answers.
    Plain PEFT folders record none; with none recorded, "auto" (the tokenizer's own) stays.

    Raises:
        UserError: the adapters were trained with different templates (one server renders one).
    """
    if requested != "auto":
        return requested
    folders = [artifact_folder(path) for path in adapters]
    recorded = {find_artifact(f).template for f in folders if (f / METHOD_FILE).is_file()} - {None, "auto"}
    if len(recorded) > 1:
        raise UserError(f"the adapters were trained with different chat templates: {', '.join(sorted(recorded))}",
                        hint="serve them from separate servers, or pass --template to choose one")
    return recorded.pop() if recorded else requested


def check_names(base_name: str, adapters: Mapping[str, Any]) -> None:
    """Check every served name, and that no two are the same.

    Raises:
        UserError: a name is invalid or used twice.
    """
    for name in (base_name, *adapters):
        check_name(name)
    if base_name in adapters:
        raise UserError(f"an adapter is named '{base_name}', like the base model",
                        hint="rename the adapter, or pass another base name")


def default_base_name(model: str | Path) -> str:
    """The base's served name: "embedded", or the model folder's (or file's) name made valid."""
    text = str(model)
    if text == "embedded":
        return text
    path = Path(text)
    raw = path.stem if path.suffix.lower() == ".gguf" else path.name
    name = re.sub(r"[^A-Za-z0-9._:-]", "-", raw).lstrip("._:-")
    return name[:64] or "base"


def artifact_folder(path: str | Path) -> Path:
    """The folder holding the trained weights: `path`, or its `adapter/` or `model/` subfolder.

    Raises:
        UserError: none of them holds `method.json` or `adapter_config.json`.
    """
    root = Path(path).expanduser()
    for folder in (root, root / "adapter", root / "model"):
        if (folder / METHOD_FILE).is_file() or (folder / PEFT_CONFIG).is_file():
            return folder
    raise UserError(f"no trained adapter or model found in '{root}'",
                    hint="point --adapter NAME=PATH at a run folder written by `domaintune train`, or a PEFT folder")


def is_lora(folder: Path) -> bool:
    """True for a PEFT LoRA folder (LoRA, QLoRA, DoRA), which can share one base with others."""
    config = folder / PEFT_CONFIG
    if not config.is_file():
        return False
    return json.loads(config.read_text(encoding="utf-8")).get("peft_type") == "LORA"


def context_length(model: Any) -> int:
    """The model's context window (`max_position_embeddings`), 2048 when it does not say."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def sampling_defaults(model: Any) -> tuple[float, float]:
    """(temperature, top_p) for requests that give none.

    A generation config the model ships (not one transformers derived from config.json) is
    followed, as vLLM does; otherwise OpenAI's defaults (1.0, 1.0).
    """
    config = getattr(model, "generation_config", None)
    if config is None or getattr(config, "_from_model_config", True):
        return 1.0, 1.0
    if not getattr(config, "do_sample", False):
        return 0.0, 1.0
    return float(config.temperature or 1.0), float(config.top_p or 1.0)


def _stack_lora(shared: Any, folder: Path, name: str) -> Any:
    from peft import PeftModel

    from domaintune.methods.lora import v5_names_as_given

    check_adapter_folder(folder)
    try:
        with v5_names_as_given():
            if isinstance(shared, PeftModel):
                shared.load_adapter(str(folder), adapter_name=name)
                return shared
            return PeftModel.from_pretrained(shared, str(folder), adapter_name=name).eval()
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"adapter '{name}' ({folder}) does not fit the base model: {str(err).splitlines()[0]}",
                        hint="serve it over the base model it was trained from") from None


def _own_copy(base: Any, folder: Path, name: str) -> Any:
    if (folder / METHOD_FILE).is_file():
        method = get_method(read_method_file(folder)["method"])
        return method.load(base, folder).eval()
    from peft import PeftModel  # a plain PEFT folder of another kind (IA3, prefix, prompt)

    check_adapter_folder(folder)
    try:
        return PeftModel.from_pretrained(base, str(folder), adapter_name=name).eval()
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"adapter '{name}' ({folder}) does not fit the base model: {str(err).splitlines()[0]}",
                        hint="serve it over the base model it was trained from") from None
