"""Tests for data/kb.py: building, searching, leave-one-out, and the pickle-free files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.kb import (ENTRIES, MANIFEST, Entry, KnowledgeBase, build_kb, entries_from_records, kb_tokens,
                                norm_text)
from domaintune.errors import UserError

PAIRS = [("Diagnosis: acute appendicitis with peritonitis", "digestive"),
         ("Diagnosis: fracture of the left femur", "injury"),
         ("Diagnosis: type 2 diabetes with kidney complications", "endocrine"),
         ("Diagnosis: acute appendicitis without perforation", "digestive"),
         ("诊断：急性阑尾炎伴腹膜炎", "消化系统"),
         ("诊断：股骨骨折", "损伤")]


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase.build(entries_from_records([chat(q, a) for q, a in PAIRS]))


def test_the_nearest_entries_come_first(kb):
    hits = kb.search(["appendicitis with peritonitis, acute"], k=2)[0]
    assert [h.entry.id for h in hits] == [0, 3] and hits[0].score > hits[1].score > 0
    assert hits[0].entry.answer == "digestive"


def test_chinese_queries_find_chinese_entries(kb):
    assert kb_tokens("急性阑尾炎伴腹膜炎")  # segmented by jieba, not one run
    hits = kb.search(["阑尾炎"], k=3)[0]
    assert hits and hits[0].entry.id == 4 and all(h.entry.answer in ("消化系统", "损伤") for h in hits)


def test_no_match_gives_no_hits(kb):
    assert kb.search(["zzzz qqqq"], k=3) == [[]]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["heart valve", "Heart  valve", "brain tumor", "nerve pain", "knee pain"]),
                min_size=2, max_size=12))
def test_leave_one_out_never_returns_the_query_or_a_duplicate(texts):
    kb = KnowledgeBase.build([Entry(i, t, "x") for i, t in enumerate(texts)])
    for text in texts:
        for hit in kb.search([text], k=len(texts), exclude=[text])[0]:
            assert norm_text(hit.entry.text) != norm_text(text)


def test_round_trip_without_pickles(kb, tmp_path):
    kb.save(tmp_path / "kb")
    loaded = KnowledgeBase.load(tmp_path / "kb")
    assert loaded.sha256 == kb.sha256 and loaded.entries == kb.entries
    for array in (tmp_path / "kb").rglob("*.npy"):
        np.load(array, allow_pickle=False)  # raises on a pickled array
    assert [h.entry.id for h in loaded.search(["femur fracture"], 2)[0]] == [h.entry.id for h in kb.search(["femur fracture"], 2)[0]]
    saved = json.loads((tmp_path / "kb" / MANIFEST).read_text())
    assert saved["entries"] == len(PAIRS) and ENTRIES in saved["files"]


def test_a_changed_file_or_another_tokenizer_is_refused(kb, tmp_path):
    folder = kb.save(tmp_path / "kb").folder
    with (folder / ENTRIES).open("a", encoding="utf-8") as fh:
        fh.write("\n")
    with pytest.raises(UserError, match="changed"):
        KnowledgeBase.load(folder)
    kb.save(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "tokenizer": "whitespace/0"}))
    with pytest.raises(UserError, match="tokenizer"):
        KnowledgeBase.load(folder)
    with pytest.raises(UserError, match="not a knowledge base"):
        KnowledgeBase.load(tmp_path)


def test_build_from_a_prepared_folder_a_table_and_a_document(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "train.jsonl").write_text("".join(json.dumps(chat(q, a)) + "\n" for q, a in PAIRS[:3]))
    (tmp_path / "codes.csv").write_text("code,description\nK35.2,Acute appendicitis with peritonitis\n")
    (tmp_path / "guide.md").write_text("# Coding guide\n\n" + "Appendicitis codes start with K35. " * 60)
    kb = build_kb([prepared, tmp_path / "codes.csv", tmp_path / "guide.md"], tmp_path / "kb")
    sources = [e.source for e in kb.entries]
    assert sources[:3] == ["train.jsonl"] * 3 and "codes.csv" in sources and sources.count("guide.md") >= 2
    table = next(e for e in kb.entries if e.source == "codes.csv")
    assert table.text == "code: K35.2; description: Acute appendicitis with peritonitis" and table.ref == "line 2"
    assert [e.id for e in kb.entries] == list(range(len(kb)))


def test_bad_sources_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        build_kb([tmp_path / "missing.jsonl"], tmp_path / "kb")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty"):
        build_kb([tmp_path / "empty.jsonl"], tmp_path / "kb")
    assert not (tmp_path / "kb").exists()  # nothing half-written
