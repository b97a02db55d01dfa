"""Retrieval for the commands that run a model: the knowledge base of a recipe or of a trained run.

Training builds or loads the recipe's knowledge base (`retrieval.kb`), puts each example's
neighbours in its prompt (leave-one-out on the training split) and records the base's path and
hash in the run (`methods.artifact.write_retrieval`). Eval, serve, chat and export take that
record and load the same base, refusing one whose hash differs unless told to.

    kb = training_kb(recipe, train_split, run_dir)            # None without retrieval
    records = augment(records, kb, tokenizer, recipe.retrieval.k, recipe.retrieval.max_tokens)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domaintune.config import Recipe
from domaintune.errors import UserError

KB_DIR = "kb"


def training_kb(recipe: Recipe, train_split: Any) -> Any:
    """The knowledge base a run trains with (built in memory from the split for `kb: train`), or None."""
    from domaintune.api.data import resolve_path
    from domaintune.config.retrieval import TRAIN_KB
    from domaintune.data.kb import KnowledgeBase, entries_from_records

    spec = recipe.retrieval.kb
    if not spec:
        return None
    if spec == TRAIN_KB:
        source = str(getattr(train_split, "path", "train.jsonl"))
        return KnowledgeBase.build(entries_from_records(train_split), sources=[source])
    return KnowledgeBase.load(Path(resolve_path(spec)))


def check_resumed_kb(run_dir: Path, kb: Any, force: bool) -> None:
    """Refuse to resume a run on another knowledge base than the one it trained with (unless forced)."""
    from domaintune.methods.artifact import RETRIEVAL_FILE, read_json

    path = Path(run_dir) / RETRIEVAL_FILE
    before = read_json(path).get("sha256") if path.is_file() else None
    now = kb.sha256 if kb is not None else None
    if before != now and not force:
        raise UserError(f"the run trained with knowledge base {str(before)[:12]}, this recipe gives {str(now)[:12]}",
                        file=str(path), hint="resume with the same retrieval.kb, or pass --force to continue anyway")


class RunRecords:
    """A training callback writing what eval, serve and export read from a run, once training starts:
    labels.json (the closed answer set), kb/ (for `kb: train`) and retrieval.json."""

    def __init__(self, run_dir: Path, answers: list[str] | None, kb: Any, recipe: Recipe) -> None:
        self.run_dir, self.answers, self.kb, self.recipe = Path(run_dir), answers, kb, recipe

    def on_train_start(self, info: dict[str, Any]) -> None:
        from domaintune.config.retrieval import TRAIN_KB
        from domaintune.methods.artifact import write_labels, write_retrieval

        write_labels(self.run_dir, self.answers)
        if self.kb is not None and self.recipe.retrieval.kb == TRAIN_KB:
            self.kb.save(self.run_dir / KB_DIR)
        write_retrieval(self.run_dir, retrieval_record(self.kb, self.recipe, self.run_dir) if self.kb is not None else None)


def retrieval_record(kb: Any, recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """What a run records about its retrieval (methods.artifact.RETRIEVAL_FILE); a base inside the
    run folder is named relative to it, so a moved run folder keeps finding its own."""
    from domaintune.models.context import RENDERING

    folder = Path(kb.folder).resolve() if kb.folder else None
    inside = folder is not None and folder.is_relative_to(Path(run_dir).resolve())
    where = str(folder.relative_to(Path(run_dir).resolve())) if inside else (str(folder) if folder else None)
    return {"kb": where, "sha256": kb.sha256, "entries": len(kb), "k": recipe.retrieval.k,
            "max_tokens": recipe.retrieval.max_tokens, "rendering": RENDERING}


def run_kb(record: dict[str, Any], kb_path: str | None = None, allow_changed: bool = False) -> Any:
    """The knowledge base a run trained with, checked (`methods.artifact.open_knowledge_base`)."""
    from domaintune.methods.artifact import open_knowledge_base

    return open_knowledge_base(record, kb_path, allow_changed)


def augment(records: Any, kb: Any, tokenizer: Any, k: int, max_tokens: int, leave_one_out: bool = False,
            template: Any = None) -> Any:
    """`records` with their retrieved entries in the prompt (a `Split` keeps its path and hash);
    entries holding a control token (`models.codec.guard_tokens`, as serve and chat) are never shown."""
    from domaintune.models.codec import guard_tokens
    from domaintune.models.context import augment_records
    from domaintune.train.data import Split

    out = augment_records(records, kb, tokenizer, k=k, max_tokens=max_tokens, leave_one_out=leave_one_out,
                          forbidden=guard_tokens(template, tokenizer) if template is not None else ())
    if hasattr(records, "sha256"):
        return Split(out, records.path, records.sha256)
    return out


def kb_build(sources: list[str], output_dir: str) -> Any:
    """`domaintune kb build`: a knowledge base from prepared folders, chat JSONL, CSV tables and documents."""
    from domaintune.api.data import resolve_path
    from domaintune.data.kb import build_kb

    if not sources:
        raise UserError("kb build needs at least one source", hint="e.g. domaintune kb build prepared/ -o kb/")
    return build_kb([resolve_path(s) for s in sources], Path(output_dir))


def kb_search(folder: str, query: str, k: int = 5) -> list[Any]:
    """`domaintune kb search`: the top entries for one query."""
    from domaintune.data.kb import KnowledgeBase

    return KnowledgeBase.load(Path(folder)).search([query], k)[0]
