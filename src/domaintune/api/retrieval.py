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


def training_kb(recipe: Recipe, train_split: Any, run_dir: Path, save: bool = True) -> Any:
    """The knowledge base a run trains with (built into run_dir/kb for `kb: train`: saved by the
    process that writes, `save`), or None."""
    from domaintune.api.data import resolve_path
    from domaintune.config.retrieval import TRAIN_KB
    from domaintune.data.kb import KnowledgeBase, entries_from_records

    spec = recipe.retrieval.kb
    if not spec:
        return None
    if spec == TRAIN_KB:
        source = str(getattr(train_split, "path", "train.jsonl"))
        kb = KnowledgeBase.build(entries_from_records(train_split), sources=[source])
        return kb.save(Path(run_dir) / KB_DIR) if save else kb
    return KnowledgeBase.load(Path(resolve_path(spec)))


def retrieval_record(kb: Any, recipe: Recipe) -> dict[str, Any]:
    """What a run records about its retrieval (methods.artifact.RETRIEVAL_FILE)."""
    from domaintune.models.context import RENDERING

    return {"kb": str(Path(kb.folder).resolve()) if getattr(kb, "folder", None) else None, "sha256": kb.sha256,
            "entries": len(kb), "k": recipe.retrieval.k, "max_tokens": recipe.retrieval.max_tokens,
            "rendering": RENDERING}


def run_kb(record: dict[str, Any], kb_path: str | None = None, allow_changed: bool = False) -> Any:
    """The knowledge base a run trained with, checked (`methods.artifact.open_knowledge_base`)."""
    from domaintune.methods.artifact import open_knowledge_base

    return open_knowledge_base(record, kb_path, allow_changed)


def augment(records: Any, kb: Any, tokenizer: Any, k: int, max_tokens: int, leave_one_out: bool = False) -> Any:
    """`records` with their retrieved entries in the prompt (a `Split` keeps its path and hash)."""
    from domaintune.models.context import augment_records
    from domaintune.train.data import Split

    out = augment_records(records, kb, tokenizer, k=k, max_tokens=max_tokens, leave_one_out=leave_one_out)
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
