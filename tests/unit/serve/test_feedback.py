"""`serve --store`: every answered request lands in the store, masked, under the id the client got;
`POST /v1/feedback` round-trips onto it, with 400s naming the field and 404s for unknown ids."""

from __future__ import annotations

import httpx
import openai

from domaintune.data.store import Store

PII = [{"role": "user", "content": "I am jane.doe@example.com, is my heart OK?"}]


def test_answers_are_stored_and_feedback_round_trips(start, tmp_path):
    db = tmp_path / "traffic.db"
    url, service = start(store=str(db), api_key="sk-1")
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-1")
    reply = client.chat.completions.create(model="tuned", messages=PII, max_tokens=4)
    streamed = list(client.chat.completions.create(model="tiny", messages=PII, max_tokens=4, stream=True))
    auth = {"Authorization": "Bearer sk-1"}
    ok = httpx.post(url + "/v1/feedback", headers=auth, timeout=30,
                    json={"id": reply.id, "rating": -1, "correction": "cardiology", "comment": "wrong"})
    assert ok.status_code == 200 and ok.json()["request_id"] == reply.id
    assert httpx.post(url + "/v1/feedback", json={"id": reply.id, "rating": 1}, timeout=30).status_code == 401
    cases = {"unknown id": ({"id": "chatcmpl-nope", "rating": 1}, 404, "id"),
             "rating": ({"id": reply.id, "rating": 0}, 400, "rating"),
             "typo": ({"id": reply.id, "rating": 1, "corection": "x"}, 400, "corection"),
             "missing id": ({"rating": 1}, 400, "id")}
    for name, (body, status, param) in cases.items():
        answer = httpx.post(url + "/v1/feedback", headers=auth, json=body, timeout=30)
        assert (answer.status_code, answer.json()["error"]["param"]) == (status, param), name
    service.store.flush()
    store = Store(db)
    try:
        rows = {r["id"]: r for r in store.requests()}
        assert set(rows) == {reply.id, streamed[0].id}
        assert rows[reply.id]["output"] == [reply.choices[0].message.content] and rows[reply.id]["model"] == "tuned"
        assert all("jane.doe" not in str(r["prompt"]) for r in rows.values())
        assert rows[streamed[0].id]["stream"] is True and rows[reply.id]["completion_tokens"] == reply.usage.completion_tokens
        [fb] = store.feedback()
        assert (fb["request_id"], fb["rating"], fb["correction"]) == (reply.id, -1, "cardiology")
    finally:
        store.close()


def test_feedback_without_a_store_says_how_to_get_one(start):
    url, _ = start()
    answer = httpx.post(url + "/v1/feedback", json={"id": "chatcmpl-1", "rating": 1}, timeout=30)
    assert answer.status_code == 404 and "--store" in answer.json()["error"]["message"]


def test_drift_on_stored_traffic_alarms_on_another_domain_only(start, tmp_path):
    """Served ICD-10 questions (not in the reference) raise no alarm; general chat prompts do, in the
    first window they fill (`domaintune monitor drift` over what `serve --store` recorded)."""
    import json
    from importlib import resources

    from domaintune import api

    def rows(name):
        text = resources.files("domaintune.datasets").joinpath(name).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    icd, general = rows("icd10_chapters.jsonl"), rows("general_prompts.jsonl")
    reference = tmp_path / "train.jsonl"  # free-text answers (the codes): no label statistic here
    reference.write_text("".join(json.dumps({"messages": [r["messages"][0], {"role": "assistant",
                                                                            "content": r["metadata"]["code"]}]}) + "\n"
                                 for r in icd[:1500]), encoding="utf-8")
    url, service = start(store=str(tmp_path / "traffic.db"))
    with httpx.Client(timeout=30) as client:
        for row in icd[1500:1620] + general[:60]:
            answer = client.post(url + "/v1/chat/completions",
                                 json={"model": "tuned", "messages": row["messages"][:1], "max_tokens": 1})
            assert answer.status_code == 200
    service.store.flush()
    report, paths = api.monitor_drift(str(reference), str(tmp_path / "traffic.db"), window=60, model="tuned",
                                      output_dir=str(tmp_path / "drift"))
    assert report["requests"] == 180 and [w["alarm"] != [] for w in report["windows"]] == [False, False, True]
    assert report["first_alarm"]["request"] == 180 and "unigram_kl" in report["first_alarm"]["statistics"]
    assert paths["plot"].stat().st_size > 0 and json.loads(paths["json"].read_text())["alarms"] == 1
