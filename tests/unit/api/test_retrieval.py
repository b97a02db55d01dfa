"""Retrieval end to end on a tiny model: training records its knowledge base, eval and serve read the
same one (serve refuses a changed one), answers carry the entries used and a closed-set confidence."""

from __future__ import annotations

import json

import httpx
import pytest

from domaintune import api
from domaintune.config import apply_overrides
from domaintune.data.kb import ENTRIES
from domaintune.errors import UserError
from domaintune.methods.artifact import RETRIEVAL_FILE
from domaintune.models.context import HEADER

LABELS = ["cardiology", "neurology", "oncology"]


@pytest.fixture(scope="module")
def run(tiny_llama, prepared, tmp_path_factory):
    from domaintune.config import Recipe

    out = tmp_path_factory.mktemp("retrieval")
    recipe = Recipe(model={"name": str(tiny_llama), "template": "chatml"},
                    train={"data_dir": str(prepared), "output_dir": str(out / "run"), "max_steps": 3,
                           "batch_tokens": 256, "threads": 1, "val_samples": 6,
                           "method": {"method": "lora", "r": 4}},
                    retrieval={"kb": "train", "k": 2, "max_tokens": 64},
                    eval={"data": str(prepared / "test.jsonl"), "output_dir": str(out / "eval"),
                          "label_field": "label", "general": None, "latency_prompts": 0, "perplexity": False})
    return recipe, api.train(recipe, force=True, progress=False)


def test_the_run_records_its_knowledge_base_and_eval_reads_it(run):
    recipe, result = run
    record = json.loads((result.run_dir / RETRIEVAL_FILE).read_text())
    assert record["k"] == 2 and record["entries"] == 60 and len(record["sha256"]) == 64
    evaluated, paths = api.evaluate(recipe, adapter=str(result.run_dir), progress=False)
    report = evaluated.report["retrieval"]
    assert report["n"] == 12 and 0 <= report["recall_at_k"] <= 100 and report["top1"]["score"] is not None
    assert all(HEADER in row["prompt_text"] for row in evaluated.predictions)
    assert "Retrieval" in paths["html"].read_text(encoding="utf-8")


def test_inspect_shows_the_retrieved_context(run, prepared):
    recipe, _ = run
    shown = api.inspect(recipe, str(prepared / "train.jsonl"), 1)
    assert HEADER in "".join(text for text, _ in shown.examples[0])


def test_serve_reads_the_same_base_refuses_a_changed_one_and_answers_with_ids(run, tiny_llama):
    from domaintune.serve.adapters import load_served
    from domaintune.serve.app import build_app
    from domaintune.serve.options import ServeOptions
    from domaintune.serve.server import serve_in_thread

    _, result = run
    served = load_served(str(tiny_llama), {"icd": result.run_dir}, template="chatml")
    assert served.routes["icd"].knowledge is not None and served.routes["icd"].labels == tuple(LABELS)
    body = {"model": "icd", "messages": [{"role": "user", "content": "The patient has heart trouble."}],
            "max_tokens": 8}
    with serve_in_thread(build_app(served, ServeOptions(closed_set="auto"))) as url:
        closed = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        guided = httpx.post(url + "/v1/chat/completions", timeout=60,
                            json={**body, "guided_choice": ["yes", "no"]}).json()
    assert closed["choices"][0]["message"]["content"] in LABELS and 0 < closed["choices"][0]["confidence"] <= 1
    assert guided["choices"][0]["message"]["content"] in ("yes", "no")
    # the ids of the entries the prompt shows: those of the k=2 found that fit the 64-token block, as in training
    knowledge = served.routes["icd"].knowledge
    _, shown = knowledge.apply(body["messages"], served.tokenizer)
    assert closed["retrieved"] == shown and 1 <= len(shown) <= 2 and all(isinstance(i, int) for i in shown)
    kb_file = result.run_dir / "kb" / ENTRIES
    kb_file.write_text(kb_file.read_text() + "\n")
    try:
        with pytest.raises(UserError, match="changed"):  # a file edited behind the manifest's back
            load_served(str(tiny_llama), {"icd": result.run_dir}, template="chatml")
    finally:
        kb_file.write_text(kb_file.read_text()[:-1])


def test_a_valid_but_different_knowledge_base_is_refused_unless_told(run, tiny_llama, tmp_path):
    import shutil

    from domaintune.data.kb import KnowledgeBase, entries_from_records
    from domaintune.serve.adapters import load_served

    _, result = run
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    rows = [{"messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]}]
    KnowledgeBase.build(entries_from_records(rows)).save(copy / "kb")  # a whole, different base
    with pytest.raises(UserError, match="changed since training"):
        load_served(str(tiny_llama), {"icd": copy}, template="chatml")
    served = load_served(str(tiny_llama), {"icd": copy}, template="chatml", kb_changed_ok=True)
    assert len(served.routes["icd"].knowledge.kb) == 1


def test_completions_refuse_guided_choice(run, tiny_llama):
    from domaintune.serve.adapters import load_served
    from domaintune.serve.app import build_app
    from domaintune.serve.options import ServeOptions
    from domaintune.serve.server import serve_in_thread

    served = load_served(str(tiny_llama), template="chatml")
    with serve_in_thread(build_app(served, ServeOptions())) as url:
        answer = httpx.post(url + "/v1/completions", timeout=60,
                            json={"model": served.base_name, "prompt": "hi", "guided_choice": ["a"]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "guided_choice"


def test_a_run_without_retrieval_records_none(make_recipe):
    result = api.train(apply_overrides(make_recipe(), ["train.max_steps=1"]), force=True, progress=False)
    assert not (result.run_dir / RETRIEVAL_FILE).exists()


def test_the_retrieval_record_reads_back_as_written_with_relative_or_absolute_paths(run, tmp_path):
    """retrieval.json is the run's, not the prior's: an absolute `kb` is kept and nothing is added
    (a slip once made this property run the prior record's checks)."""
    import shutil

    from domaintune.methods.artifact import find_artifact

    _, result = run
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    written = json.loads((copy / RETRIEVAL_FILE).read_text())
    relative = find_artifact(copy).retrieval
    assert relative["kb"] == str(copy / written["kb"]) and set(relative) == set(written)
    (copy / RETRIEVAL_FILE).write_text(json.dumps({**written, "kb": str(copy / written["kb"])}))
    absolute = find_artifact(copy).retrieval
    assert absolute == relative
