"""Shadow mode (serve/shadow.py): the candidate stays hidden, answers copies of production's requests
after production has, and its disagreements reach the store's review queue and `monitor shadow`."""

from __future__ import annotations

import httpx
import pytest

from domaintune import api
from domaintune.data.store import Store
from domaintune.serve.adapters import load_served
from domaintune.serve.app import build_app
from domaintune.serve.options import ServeOptions
from domaintune.serve.server import serve_in_thread
from domaintune.serve.shadow import chosen, disagreement

PROMPTS = [f"Question {i}: what is the right department for case {i}?" for i in range(24)]


@pytest.fixture(scope="module")
def shadowed(tiny_llama, lora_runs):
    return load_served(str(tiny_llama), {"tuned": lora_runs["tuned"]}, template="chatml", base_name="tiny",
                       shadows={"tuned": lora_runs["other"]})


def test_the_candidate_is_hidden(shadowed):
    assert shadowed.names == ["tiny", "tuned"] and shadowed.shadows == {"tuned": "tuned:shadow"}
    with serve_in_thread(build_app(shadowed, ServeOptions())) as url:
        listed = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        direct = httpx.post(url + "/v1/chat/completions", timeout=30,
                            json={"model": "tuned:shadow", "messages": [{"role": "user", "content": "hi"}]})
    assert [m["id"] for m in listed] == ["tiny", "tuned"] and direct.status_code == 400


def test_disagreements_reach_the_review_queue_and_the_report(shadowed, tmp_path):
    db = tmp_path / "traffic.db"
    app = build_app(shadowed, ServeOptions(store=str(db), shadow_rate=1.0, shadow_threshold=0.3))
    ids = []
    with serve_in_thread(app) as url, httpx.Client(timeout=30) as client:
        for text in PROMPTS:
            answer = client.post(url + "/v1/chat/completions", json={
                "model": "tuned", "messages": [{"role": "user", "content": text}], "max_tokens": 6,
                "temperature": 0}).json()
            ids.append(answer["id"])
            app.state.service.prepare.submit(lambda: None).result()  # the shadow is planned there
            app.state.service.shadows._finish.submit(lambda: None).result()
        client.post(url + "/v1/feedback", json={"id": ids[0], "rating": -1, "correction": "cardiology"})
        metrics = client.get(url + "/metrics").text
    app.state.service.store.flush()
    store = Store(db)
    try:
        shadows = store.shadows()
        pending = store.shadows(review="pending")
    finally:
        store.close()
    assert {s["request_id"] for s in shadows} <= set(ids) and len(shadows) >= 20  # a few may find the queue busy
    assert all(s["candidate"] == "tuned:shadow" and 0 <= s["disagreement"] <= 1 for s in shadows)
    assert pending and all(s["disagreement"] > 0.3 for s in pending)  # the two adapters answer differently
    assert 'domaintune_shadow_requests_total{model="tuned",outcome="answered"}' in metrics
    report, paths = api.monitor_shadow(str(db), window=10, output_dir=str(tmp_path / "shadow"))
    assert report["cases"] == len(shadows) and report["pending_review"] == len(pending)
    assert report["largest"][0]["disagreement"] == max(s["disagreement"] for s in shadows)
    assert report["users"]["corrections"] == (1 if ids[0] in {s["request_id"] for s in shadows} else 0)
    assert paths["plot"].is_file()


def test_the_chosen_share_and_the_disagreement_measure():
    share = sum(chosen(f"chatcmpl-{i}", 0.25) for i in range(4000)) / 4000
    assert 0.22 < share < 0.28 and chosen("chatcmpl-1", 0.25) == chosen("chatcmpl-1", 0.25)
    assert not any(chosen(f"x{i}", 0.0) for i in range(100)) and all(chosen(f"x{i}", 1.0) for i in range(100))
    assert disagreement("cardiology", "cardiology", True) == 0 and disagreement("cardiology", "oncology", True) == 1
    same, near, far = (disagreement("the heart valve is fine", t, False)
                       for t in ("the heart valve is fine", "the heart valve is fine now", "xyz"))
    assert same == 0 < near < far <= 1
