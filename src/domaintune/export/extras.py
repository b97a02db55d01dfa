"""What an export carries besides weights: the run's answer set, and its knowledge base with a note.

A model trained with retrieval saw the top-k entries of its knowledge base in every prompt; served
without them it answers worse. So an export copies the base beside the weights (`kb/`), records it
(`retrieval.json`, the path relative to the export) and writes RETRIEVAL.md, which shows vLLM and
llama.cpp users the exact prompt format to rebuild (`domaintune serve` does it by itself). A run's
closed answer set (`labels.json`) is copied too, so `serve --closed-set auto` works on the export,
and so is its prior (`prior.json` with `neighbours/` and `classifier/`), so that serving the export
mixes in the same vote with the same weight as eval did (other servers decode with the model alone).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from domaintune.methods.artifact import (LABELS_FILE, PRIOR_CLASSIFIER, PRIOR_DIR, PRIOR_FILE, RETRIEVAL_FILE,
                                        find_artifact, open_knowledge_base, open_prior, write_prior, write_retrieval)
from domaintune.models.context import HEADER

KB_DIR, NOTE = "kb", "RETRIEVAL.md"


def copy_run_extras(run_dir: Path, out: Path) -> list[str]:
    """Copy labels.json, the neighbour prior (prior.json, neighbours/) and the knowledge base (with
    retrieval.json and RETRIEVAL.md) into `out`."""
    art = find_artifact(run_dir)
    written = []
    source = art.run_dir or art.folder
    if (source / LABELS_FILE).is_file():
        shutil.copyfile(source / LABELS_FILE, out / LABELS_FILE)
        written.append(LABELS_FILE)
    prior = art.prior
    if prior is not None:
        open_prior(prior)  # what the weight was fitted with, unchanged, or a clear refusal
        _copy_tree(Path(prior["kb"]), out / PRIOR_DIR)
        copied = {"kb": PRIOR_DIR}
        if prior.get("classifier"):
            _copy_tree(Path(prior["classifier"]), out / PRIOR_CLASSIFIER)
            copied["classifier"] = PRIOR_CLASSIFIER
        write_prior(out, {**prior, **copied})
        written += [*copied.values(), PRIOR_FILE]
    record = art.retrieval
    if record is not None and record.get("kb"):
        open_knowledge_base(record)  # the base the run trained with, unchanged, or a clear refusal
        _copy_tree(Path(record["kb"]), out / KB_DIR)
        write_retrieval(out, {**record, "kb": KB_DIR})
        (out / NOTE).write_text(_note(record), encoding="utf-8")
        written += [KB_DIR, RETRIEVAL_FILE, NOTE]
    return written


def _copy_tree(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def _note(record: dict) -> str:
    return f"""# This model reads a knowledge base

It was trained with the top {record['k']} entries of `kb/` (sha256 {record['sha256'][:12]}, {record.get('entries')}
entries) in every prompt. Served without them it answers worse.

- `domaintune serve` does the lookup by itself for an adapter export
  (`domaintune serve BASE --adapter name=THIS_FOLDER`) or the run folder it came from; each answer
  lists the entries used in its `retrieved` field. A merged model served as a base does not retrieve.
- vLLM, llama.cpp and Ollama do not retrieve. Look the entries up yourself
  (`domaintune kb search kb/ "the user's question" -k {record['k']}`, or load `kb/` with
  `domaintune.data.kb.KnowledgeBase.load`) and put them before the user's message, exactly so
  (at most {record['max_tokens']} tokens of it):

```
{HEADER}
[1] <entry text> -> <entry answer>
[2] <entry text> -> <entry answer>

<the user's message>
```
"""
