"""Find and load what `domaintune train` produced: one loader for eval, export and serve.

A user may point at a run folder (`runs/demo`), at its `adapter/` or `model/` folder, or at a
folder copied elsewhere. `find_artifact` works out which, reads `method.json` (the method that
saved it) and, for a run folder, `recipe.resolved.yaml` (the base model and chat template it was
trained with), so `load_artifact` rebuilds exactly the model that was trained:

    art = find_artifact("runs/demo")            # Artifact(kind='adapter', method='lora', base='embedded', ...)
    model = load_artifact(art)                   # base + adapter, eval mode
    model = load_artifact(art, base="models/x")  # another copy of the same base
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from domaintune.errors import UserError
from domaintune.files import write_json_atomic
from domaintune.methods.base import check_base, get_method, read_method_file

RECIPE_FILE = "recipe.resolved.yaml"  # written by train/run.py next to adapter/ or model/ (and in checkpoints)
SUMMARY_FILE = "summary.json"  # what the run did (train/summary.py)
METRICS_FILE = "metrics.jsonl"  # one line per step and validation (train/callbacks.py)
PLOT_FILE = "loss.png"  # the loss curves (train/callbacks.py)
LABELS_FILE = "labels.json"  # the run's closed answer set (data.answers), beside adapter/ or model/
RETRIEVAL_FILE = "retrieval.json"  # the knowledge base a run read (path, sha256, k, budget, rendering)
PRIOR_FILE = "prior.json"  # the prior of a closed answer set (kind, index/classifier paths and sha256, k, weight)
PRIOR_DIR = "neighbours"  # the index of the training pairs that vote (kind "neighbours"), beside prior.json
PRIOR_CLASSIFIER = "classifier"  # the TF-IDF + LR classifier of the training pairs (kind "tfidf_lr")
PRIOR_KINDS = ("neighbours", "tfidf_lr")
KINDS = ("adapter", "model")


@dataclass(frozen=True)
class Artifact:
    """A trained folder and what it needs to load.

    Attributes:
        folder: the folder holding `method.json` (an `adapter/` or `model/` folder).
        kind: "adapter" (needs the base) or "model" (complete weights).
        method: the method that saved it, e.g. "lora".
        base: the base model spec from the run's recipe (None when the folder stands alone).
        template: the chat template name from the run's recipe (None when unknown).
        run_dir: the run folder, when the artifact sits in one.
    """

    folder: Path
    kind: str
    method: str
    base: str | None = None
    template: str | None = None
    run_dir: Path | None = None

    @property
    def name(self) -> str:
        """A short name for tables and `/v1/models`: the run folder's name, else the folder's."""
        return (self.run_dir or self.folder).name

    @property
    def labels(self) -> list[str] | None:
        """The closed answer set training recorded (in the weights folder or the run folder), or None."""
        for folder in (self.folder, self.run_dir):
            if folder is not None and (folder / LABELS_FILE).is_file():
                return read_labels(folder)
        return None

    @property
    def retrieval(self) -> dict[str, Any] | None:
        """The retrieval a run trained with (`write_retrieval`), or None."""
        for folder in (self.folder, self.run_dir, self.folder.parent):
            if folder is not None and (folder / RETRIEVAL_FILE).is_file():
                record = read_json(folder / RETRIEVAL_FILE)
                if record.get("kb") and not Path(record["kb"]).is_absolute():  # an export's kb/ beside it
                    record["kb"] = str(folder / record["kb"])
                return record
        return None

    @property
    def prior(self) -> dict[str, Any] | None:
        """The neighbour prior training fitted (`write_prior`, path made absolute), or None."""
        for folder in (self.folder, self.run_dir, self.folder.parent):
            if folder is not None and (folder / PRIOR_FILE).is_file():
                record = read_json(folder / PRIOR_FILE)
                if not isinstance(record.get("weight"), (int, float)) or not record.get("kb"):
                    raise UserError("the run's neighbour prior record is incomplete", file=str(folder / PRIOR_FILE),
                                    hint="train the run again, or delete the file to decode without it")
                record.setdefault("kind", "neighbours")  # records written before there were kinds
                if record["kind"] not in PRIOR_KINDS:
                    raise UserError(f"the run's prior is of an unknown kind {record['kind']!r}",
                                    file=str(folder / PRIOR_FILE), hint="upgrade domaintune, or train the run again")
                record["kb"] = str(folder / record["kb"])
                if record.get("classifier"):
                    record["classifier"] = str(folder / record["classifier"])
                return record
        return None


def write_prior(folder: Path, record: dict[str, Any] | None) -> None:
    """Record a run's neighbour prior (None removes a stale record)."""
    _write_json(Path(folder) / PRIOR_FILE, record)


def open_prior_index(record: dict[str, Any]) -> Any:
    """The index a prior record names, checked to hold what training fitted the weight with.

    Raises:
        UserError: the index is missing or changed.
    """
    from domaintune.data.kb import KnowledgeBase

    path = Path(record["kb"])
    if not path.is_dir():
        raise UserError("the run's neighbour index is not there", file=str(path),
                        hint="restore it, or train the run again")
    kb = KnowledgeBase.load(path)
    if kb.sha256 != record.get("sha256"):
        raise UserError(f"the neighbour index changed since training (sha256 {kb.sha256[:12]})", file=str(path),
                        hint="restore the index the run was trained with, or train the run again")
    return kb


def open_prior(record: dict[str, Any]) -> Callable[[Sequence[str]], list[dict[str, float]]]:
    """The vote of a prior record (`Artifact.prior`): questions -> per question, answer -> weight
    summing to 1 ({} when nothing votes): the `k` nearest training pairs (kind "neighbours",
    `data.kb.neighbour_votes`) or the classifier's probabilities (kind "tfidf_lr", `data.classic`).

    Raises:
        UserError: the index or classifier is missing or changed since training.
    """
    if record["kind"] == "tfidf_lr":
        from domaintune.data.classic import TextClassifier

        return TextClassifier.load(Path(record["classifier"]), record.get("classifier_sha256")).votes
    from domaintune.data.kb import neighbour_votes

    kb, k = open_prior_index(record), int(record["k"])
    return lambda questions: neighbour_votes(kb, questions, k)


def open_knowledge_base(record: dict[str, Any], kb_path: str | Path | None = None,
                        allow_changed: bool = False) -> Any:
    """The knowledge base a run trained with (`record` from `Artifact.retrieval`), or the one at
    `kb_path`, checked to be the same: same content hash, same rendering of the context.

    Raises:
        UserError: a missing base, one whose hash differs from the run's (unless `allow_changed`),
            or a run that used another rendering of the context.
    """
    from domaintune.data.kb import KnowledgeBase
    from domaintune.models.context import RENDERING

    if record.get("rendering") != RENDERING:
        raise UserError(f"the run put retrieved entries into prompts as {record.get('rendering')!r}; this version "
                        f"writes {RENDERING!r}", hint="train the run again with this version")
    path = kb_path or record.get("kb")
    if not path:
        raise UserError("the run does not say where its knowledge base is", hint="train the run again")
    if not Path(path).is_dir():
        raise UserError("the run's knowledge base is not there", file=str(path),
                        hint="restore it, or train the run again")
    kb = KnowledgeBase.load(Path(path))
    if kb.sha256 != record.get("sha256") and not allow_changed:
        raise UserError(f"the knowledge base changed since training (sha256 {kb.sha256[:12]}, the run read "
                        f"{str(record.get('sha256'))[:12]})", file=str(path),
                        hint="restore the base the run was trained with (`domaintune serve --kb-changed-ok` "
                             "serves a changed one anyway)")
    return kb


def write_retrieval(folder: Path, record: dict[str, Any] | None) -> None:
    """Record the knowledge base a run reads (None removes a stale record)."""
    _write_json(Path(folder) / RETRIEVAL_FILE, record)


def _write_json(path: Path, value: Any) -> None:
    if value is None:
        path.unlink(missing_ok=True)
        return
    write_json_atomic(path, value)


def read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name} ({exc})", file=str(path), hint="train the run again") from None


def write_labels(folder: Path, answers: list[str] | None) -> None:
    """Record a run's closed answer set (None removes a stale one)."""
    _write_json(Path(folder) / LABELS_FILE, None if answers is None else {"answers": answers})


def read_labels(folder: Path) -> list[str]:
    """The answers `write_labels` recorded in `folder`.

    Raises:
        UserError: the file is not a list of answers.
    """
    path = Path(folder) / LABELS_FILE
    try:
        answers = read_json(path)["answers"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"cannot read the run's answer set ({exc})", file=str(path),
                        hint="train again, or delete the file to decode freely") from None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise UserError("the run's answer set is not a list of strings", file=str(path),
                        hint="train again, or delete the file to decode freely")
    return answers


def find_artifact(path: str | Path) -> Artifact:
    """Locate the trained weights under `path` (a run folder or the weights folder itself).

    Raises:
        UserError: nothing trained is there.

    Example:
        >>> find_artifact("runs/demo").folder   # doctest: +SKIP
        PosixPath('runs/demo/adapter')
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError("no such folder", file=str(root), hint="point at a run folder written by `domaintune train`")
    folder = root if (root / "method.json").is_file() else next(
        (root / k for k in KINDS if (root / k / "method.json").is_file()), None)
    if folder is None:
        raise UserError("no trained adapter or model in this folder", file=str(root),
                        hint="point at a run folder written by `domaintune train` (it holds adapter/ or model/)")
    method = read_method_file(folder)["method"]
    run_dir = folder.parent if (folder.parent / RECIPE_FILE).is_file() else None
    base, template = _recipe_model(run_dir / RECIPE_FILE) if run_dir else (None, None)
    kind = "model" if (folder / "config.json").is_file() else "adapter"
    return Artifact(folder, kind, method, base, template, run_dir)


def _recipe_model(recipe: Path) -> tuple[str | None, str | None]:
    data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    model = data.get("model") or {}
    return model.get("name"), model.get("template")


def load_artifact(artifact: Artifact, base: str | None = None, *, base_model: Any = None,
                  trust_remote_code: bool = False) -> Any:
    """The trained model in eval mode: base + adapter, or the complete saved model.

    Args:
        artifact: from `find_artifact`.
        base: the base model spec, overriding the run's recipe (needed for a lone adapter folder).
        base_model: an already loaded base to wrap (serve and eval share one base in memory).
        trust_remote_code: passed to the base model loader.

    Raises:
        UserError: an adapter whose base is unknown, or a base of another shape.
    """
    from domaintune.models.load import load_model

    if base_model is None:
        spec = base or artifact.base
        if artifact.kind == "model":
            spec = str(artifact.folder)
        if spec is None:
            raise UserError("this adapter folder does not say which base model it was trained on",
                            file=str(artifact.folder), hint="pass the base model with --model")
        base_model = load_model(spec, trust_remote_code=trust_remote_code)
        if artifact.kind == "model":
            return base_model.eval()
    check_base(base_model, read_method_file(artifact.folder))
    model = get_method(artifact.method).load(base_model, artifact.folder)
    return model.eval()
