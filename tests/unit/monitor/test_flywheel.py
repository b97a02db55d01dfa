"""Feedback into the next round (monitor/flywheel.py, `domaintune monitor export`): every feedback row
ends as a training record or a reject with its reason, test questions never come back, and
`prepare` accepts what comes out."""

from __future__ import annotations

import json

from domaintune import api
from domaintune.cli import main
from domaintune.data.store import Store

QUESTIONS = ["Chest pain on exertion, call me at jane@example.com", "Persistent headache and blurred vision",
             "Lump in the left breast", "Fracture of the left wrist", "Itchy rash on both arms",
             "Cough with fever for a week"]


def _store(path, feedback):
    store = Store(path)
    for i, q in enumerate(QUESTIONS):
        store.write({"id": f"chatcmpl-{i}", "model": "icd", "status": 200, "output": [f"answer {i}"],
                     "prompt": [{"role": "user", "content": q}]})
    for request_id, rating, correction in feedback:
        store.add_feedback(request_id, rating, correction=correction)
    store.close()


def test_feedback_becomes_records_or_reasoned_rejects_and_prepare_takes_it(tmp_path):
    db = tmp_path / "traffic.db"
    _store(db, [("chatcmpl-0", 2, "Diseases of the circulatory system"),   # a correction
                ("chatcmpl-1", 5, None),                                    # an approval (stars)
                ("chatcmpl-2", 2, None),                                    # low, nothing to learn
                ("chatcmpl-3", 5, None),                                    # a test question
                ("chatcmpl-4", 4, None), ("chatcmpl-4", 2, "Diseases of the skin"),  # the later one wins
                ("chatcmpl-5", 1, None)])                                   # the worst of five stars
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[3]},
                                             {"role": "assistant", "content": "x"}]}) + "\n", encoding="utf-8")
    out = api.monitor_export(str(db), str(tmp_path / "new.jsonl"), exclude=[str(test)])
    assert out["records"] + out["rejects"] == 7
    records = [json.loads(line) for line in (tmp_path / "new.jsonl").read_text().splitlines()]
    answers = {r["messages"][0]["content"]: (r["messages"][-1]["content"], r["metadata"]["origin"]) for r in records}
    assert answers == {QUESTIONS[0].replace("jane@example.com", "<EMAIL>"): ("Diseases of the circulatory system",
                                                                            "feedback-correction"),
                       QUESTIONS[1]: ("answer 1", "feedback-approved"),
                       QUESTIONS[4]: ("Diseases of the skin", "feedback-correction")}
    reasons = sorted(json.loads(line)["reason"] for line in out["rejects_file"].read_text().splitlines())
    assert len(reasons) == 4 and sum("without a correction" in r for r in reasons) == 2
    assert any("excluded data" in r for r in reasons) and any("later feedback" in r for r in reasons)
    assert main(["prepare", str(tmp_path / "new.jsonl"), "-o", str(tmp_path / "prepared"), "--model", "none",
                 "-q"]) == 0


def test_thumbs_up_approves_when_no_star_rating_exists(tmp_path):
    db = tmp_path / "traffic.db"
    _store(db, [("chatcmpl-1", 1, None), ("chatcmpl-2", -1, None)])
    out = api.monitor_export(str(db), str(tmp_path / "new.jsonl"))
    assert (out["records"], out["rejects"], out["by_origin"]) == (1, 1, {"feedback-approved": 1})
