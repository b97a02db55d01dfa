"""The data commands of the Python API: prepare, inspect, agree, and the shipped recipes and datasets.

    from domaintune import api
    from domaintune.config import load_recipe
    report = api.prepare(load_recipe("recipe.yaml"))
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from domaintune.config import Recipe
from domaintune.errors import UserError

RECIPES = "recipes"
BUNDLED = "bundled:"


def prepare(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Turn raw files into clean, deduplicated, PII-masked, mixed and split training data.

    Args:
        recipe: a validated recipe; its `prepare` and `model` sections are used.
        progress: show a progress bar.

    Returns:
        The report dict (also written as report.json and report.md in the output folder).

    Example:
        >>> report = prepare(load_recipe(None, ["prepare.inputs=[{path: data.jsonl}]"]))  # doctest: +SKIP
    """
    from domaintune.data.prepare import prepare_data

    cfg = recipe.prepare
    for spec in cfg.inputs:
        spec.path = resolve_path(spec.path)
    tokenizer, count_tokens, special = _tokenizer_parts(recipe)
    processor = _row_processor(cfg, special)
    with _progress_bar(cfg, progress) as advance:
        return prepare_data(cfg, processor, count_tokens, tokenizer, progress=advance)


def _tokenizer_parts(recipe: Recipe) -> tuple[Any, Any, tuple[str, ...]]:
    """The model's tokenizer, a token counter with its template, and the tokens content may not carry."""
    if recipe.model.name == "none":
        return None, None, ()
    from domaintune.models.codec import guard_tokens
    from domaintune.models.load import load_tokenizer
    from domaintune.models.templates import get_template
    from domaintune.models.tokens import make_token_counter

    tokenizer = load_tokenizer(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    template = get_template(recipe.model.template, tokenizer)
    return tokenizer, make_token_counter(tokenizer, template), guard_tokens(template, tokenizer)


def _row_processor(cfg, special: tuple[str, ...]):
    from domaintune.data.clean import CleanRules
    from domaintune.data.process import RowProcessor
    from domaintune.data.terms import TermDict

    clean = None
    if cfg.clean.nfkc or cfg.clean.fold_whitespace or cfg.clean.strip_control or cfg.clean.regex:
        clean = CleanRules(cfg.clean.nfkc, cfg.clean.fold_whitespace, cfg.clean.strip_control,
                           tuple((r.pattern, r.replace) for r in cfg.clean.regex))
    formats = {spec.format for spec in cfg.inputs}
    return RowProcessor(
        record_format=formats.pop() if len(formats) == 1 else "auto",
        clean=clean,
        pii_kinds=tuple(cfg.pii.kinds) if cfg.pii.enabled else (),
        terms=TermDict.from_file(cfg.terms) if cfg.terms else None,
        injection=cfg.role_injection,
        extra_control_tokens=special,
        last_turns=cfg.keep_last_turns,
    )


class _progress_bar:
    """A rich bar over input bytes, with rows/s and ETA; a no-op when off."""

    def __init__(self, cfg, enabled: bool) -> None:
        self.total = sum(_size(spec.path) for spec in cfg.inputs)
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("prepare"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                                  transient=True)
        self._progress.start()
        task = self._progress.add_task("prepare", total=self.total or None)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _size(path: str) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def inspect(recipe: Recipe, path: str, show: int = 3):
    """Rendered examples of a prepared file with trained tokens marked, and the share trained.

    Example:
        >>> inspect(load_recipe(None), "prepared/train.jsonl").share  # doctest: +SKIP
        0.21
    """
    from domaintune.models.load import load_tokenizer
    from domaintune.models.templates import get_template
    from domaintune.train.inspect import inspect_records

    tokenizer = load_tokenizer(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    template = get_template(recipe.model.template, tokenizer)
    return inspect_records(path, tokenizer, template, recipe.train.max_len, show,
                           train_on_prompt=recipe.train.train_on_prompt,
                           transform=_retrieval_view(recipe, path, tokenizer))


def _retrieval_view(recipe: Recipe, path: str, tokenizer: Any):
    """With `retrieval.kb`, show records as training sees them: their neighbours in the prompt."""
    if not recipe.retrieval.kb:
        return None
    from domaintune.api.retrieval import augment, training_kb
    from domaintune.models.templates import get_template
    from domaintune.train.data import load_split

    kb = training_kb(recipe, load_split(Path(path).parent / "train.jsonl"))
    cfg, template = recipe.retrieval, get_template(recipe.model.template, tokenizer)
    return lambda records: augment(records, kb, tokenizer, cfg.k, cfg.max_tokens, leave_one_out=True,
                                   template=template)


def agree(path: str, threshold: float = 0.6):
    """Inter-annotator agreement (Cohen's kappa for two raters, Fleiss' for more) with pass/fail.

    Example:
        >>> agree("labels.csv", threshold=0.6).passed  # doctest: +SKIP
        True
    """
    from domaintune.data.agree import agreement

    return agreement(path, threshold)


def recipe_names() -> list[str]:
    """Names of the recipes shipped inside the package."""
    folder = resources.files("domaintune") / RECIPES
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def copy_recipe(name: str, dest: str) -> Path:
    """Copy a shipped recipe to `dest`, so it matches the installed version (like `tune cp`)."""
    names = recipe_names()
    if name.removesuffix(".yaml") not in names:
        raise UserError(f"no shipped recipe '{name}'", hint=f"choose one of: {', '.join(names)}")
    target = Path(dest)
    if target.is_dir():
        target = target / f"{name.removesuffix('.yaml')}.yaml"
    with resources.as_file(resources.files("domaintune") / RECIPES / f"{name.removesuffix('.yaml')}.yaml") as src:
        shutil.copyfile(src, target)
    return target


def bundled_dataset(name: str = "icd10_chapters.jsonl") -> Path:
    """Path of a dataset shipped in the package (see datasets/DATASETS.md)."""
    with resources.as_file(resources.files("domaintune") / "datasets" / name) as path:
        if not path.exists():
            raise UserError(f"bundled dataset '{name}' is missing from the install", hint="reinstall domaintune")
        return path




def resolve_path(path: str) -> str:
    """A recipe path as a real path: `bundled:NAME` names a dataset shipped in the package."""
    return str(bundled_dataset(path.removeprefix(BUNDLED))) if path.startswith(BUNDLED) else path


def training_split(path: str) -> Any:
    """The training split a user names: a prepared folder (its train.jsonl) or a JSONL file."""
    from domaintune.train.data import load_split

    folder = Path(resolve_path(path))
    return load_split(folder / "train.jsonl" if folder.is_dir() else folder)
