"""Tests for serve/app.py and handlers.py through a real server on loopback.

The `openai` client talks to it for plain and streaming chat; plain httpx checks every error
case. The tiny LLaMA carries two LoRA adapters, "tuned" and "other", served by name.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from domaintune.models.decode import SamplingParams, decode_stream, generate

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def expected(served, name, messages, max_tokens):
    """Greedy text generated directly (no server) with `name` active."""
    prompt = served.codec.chat_prompt(messages)
    with served.activate(name) as model:
        gen = generate(model, [prompt], SamplingParams(max_tokens, stop_ids=served.codec.stop_ids),
                       served.codec.pad_id)[0]
    stream = served.codec.stream()
    return "".join(stream.push(t) for t in gen.token_ids) + stream.flush()


def chat(url, model="tuned", **body):
    return httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": HELLO, **body}, timeout=30)


def test_openai_client_chats_with_an_adapter_chosen_by_name(served, start):
    want = {name: expected(served, name, HELLO, 12) for name in ("tiny", "tuned", "other")}
    assert len(set(want.values())) == 3  # each adapter really changes the output
    url, _ = start()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    for name, text in want.items():
        reply = client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content == text
        assert reply.model == name and reply.usage.prompt_tokens == len(served.codec.chat_prompt(HELLO))
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_openai_client_streams_the_same_text(served, start):
    url, _ = start()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    plain = client.chat.completions.create(model="tuned", messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="tuned", messages=HELLO, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_raw_stream_ends_with_done(start):
    url, _ = start()
    with httpx.stream("POST", url + "/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4,
                                                             "stream": True}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_with_several_prompts_and_n(start):
    url, _ = start()
    body = {"model": "other", "prompt": ["Hello there", "The quick brown"], "n": 2, "max_tokens": 5, "temperature": 0}
    reply = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
    choices = reply["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] == choices[1]["text"] and choices[2]["text"] == choices[3]["text"]  # greedy n copies
    assert choices[0]["text"] != choices[2]["text"]
    assert reply["usage"]["completion_tokens"] <= 4 * 5


def test_seeded_sampling_is_reproducible_and_n_samples_differ(start):
    url, _ = start()
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 12, "temperature": 1.0, "seed": 5, "n": 2}
    first = httpx.post(url + "/v1/completions", json=body, timeout=30).json()["choices"]
    again = httpx.post(url + "/v1/completions", json=body, timeout=30).json()["choices"]
    assert [c["text"] for c in first] == [c["text"] for c in again]
    assert first[0]["text"] != first[1]["text"]
    top = httpx.post(url + "/v1/completions", json={**body, "seed": 2**64 - 1}, timeout=30)
    assert top.status_code == 200  # seed + choice index wraps instead of overflowing


def test_models_lists_the_base_then_the_adapters(start):
    url, _ = start()
    data = httpx.get(url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["tiny", "tuned", "other"]
    assert [m["parent"] for m in data] == [None, "tiny", "tiny"]


@pytest.mark.parametrize("patch, param", [
    ({"model": "missing"}, "model"),
    ({"model": "/etc/passwd"}, "model"),  # a path is just an unknown name
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 9}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"),  # above max_tokens_limit
    ({"max_tokens": 250}, "max_tokens"),  # prompt + 250 > the 256-token context
    ({"messages": [{"role": "user", "content": "word " * 300}]}, "messages"),  # prompt alone too long
    ({"messages": [{"role": "user", "content": "hi <|im_end|>"}]}, "messages.0.content"),
    ({"messages": "hi"}, "messages"),
])
def test_errors_are_400_naming_the_field(start, patch, param):
    url, _ = start()
    response = httpx.post(url + "/v1/chat/completions", json={"model": "tuned", "messages": HELLO, **patch})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_bodies_unknown_paths_and_big_bodies(start):
    url, _ = start(max_body_bytes=4096)
    bad = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert httpx.post(url + "/v1/completions", json=[1]).status_code == 400
    missing = httpx.get(url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(url + "/v1/chat/completions").status_code == 405
    big = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x" * 5000})
    assert big.status_code == 413


def test_api_key_guards_every_route_but_health(start):
    url, _ = start(api_key="sk-test")
    assert httpx.get(url + "/health").status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer sk-test"}).status_code == 200
    denied = chat(url)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong").models.list()
    reply = openai.OpenAI(base_url=url + "/v1", api_key="sk-test").chat.completions.create(
        model="tuned", messages=HELLO, max_tokens=3)
    assert reply.choices[0].message.content is not None


class Gate:
    """A decode that waits for `release` before decoding (to hold the worker busy)."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, model, prompts, params, pad_id, *, should_stop):
        self.entered.set()
        assert self.release.wait(20)
        yield from decode_stream(model, prompts, params, pad_id, should_stop=should_stop)


def test_full_queue_answers_429_with_retry_after(start):
    gate = Gate()
    url, service = start(decode=gate, max_batch_size=1, max_queue=1, retry_after_s=2)
    results = {}

    def send(key):
        results[key] = chat(url, max_tokens=3)

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert gate.entered.wait(10)  # the worker holds the first request
    second = threading.Thread(target=send, args=("second",))
    second.start()
    for _ in range(500):
        if service.engine.queue_depth == 1:
            break
        time.sleep(0.01)
    refused = chat(url, max_tokens=3)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    gate.release.set()
    first.join(20)
    second.join(20)
    assert results["first"].status_code == results["second"].status_code == 200


def failing_after_one_step(model, prompts, params, pad_id, *, should_stop):
    stream = decode_stream(model, prompts, params, pad_id, should_stop=should_stop)
    yield next(stream)
    raise RuntimeError("the accelerator fell over")


def test_an_error_mid_stream_arrives_as_an_sse_error_event(start):
    url, _ = start(decode=failing_after_one_step)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="tuned", messages=HELLO, max_tokens=20, stream=True)
    with pytest.raises(openai.APIError, match="fell over"):
        list(stream)
    plain = chat(url, max_tokens=20)
    assert plain.status_code == 500 and plain.json()["error"]["code"] == "generation_failed"


class Slow:
    """The real decoder, slowed down per step, counting steps."""

    def __init__(self, step_s: float) -> None:
        self.step_s, self.steps = step_s, 0

    def __call__(self, model, prompts, params, pad_id, *, should_stop):
        for step in decode_stream(model, prompts, params, pad_id, should_stop=should_stop):
            self.steps += 1
            time.sleep(self.step_s)
            yield step


def test_a_client_that_disconnects_frees_its_slot(start, tmp_path):
    slow = Slow(0.02)
    log = tmp_path / "requests.jsonl"
    url, service = start(decode=slow, request_log=str(log))
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
        next(response.iter_lines())  # one chunk, then hang up
    for _ in range(300):
        if log.exists() and log.read_text():
            break
        time.sleep(0.01)
    assert json.loads(log.read_text())["status"] == 499
    assert slow.steps < 100  # the row was dropped well before its 200 tokens
    assert service.metrics.in_flight._value.get() == 0


def _wait_for_log(log):
    for _ in range(500):
        if log.exists() and log.read_text():
            return [json.loads(line) for line in log.read_text().splitlines()]
        time.sleep(0.01)
    raise AssertionError("nothing logged")


def test_a_plain_request_whose_client_hangs_up_stops_decoding(start, tmp_path):
    slow = Slow(0.02)
    log = tmp_path / "requests.jsonl"
    url, service = start(decode=slow, request_log=str(log))
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while tokens still arrive every 20 ms
        httpx.post(url + "/v1/completions", json=body, timeout=0.5)
    assert _wait_for_log(log)[0]["status"] == 499
    assert slow.steps < 100  # seen at once, not after 200 steps (the poll waits for 250 ms without a token)
    assert service.metrics.in_flight._value.get() == 0


def test_a_client_hanging_up_mid_upload_is_499_not_500(start, tmp_path):
    import socket
    from urllib.parse import urlparse

    log = tmp_path / "requests.jsonl"
    url, service = start(request_log=str(log))
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": \"tiny\", ")
        time.sleep(0.2)
    assert _wait_for_log(log)[0]["status"] == 499
    assert "status=\"500\"" not in httpx.get(url + "/metrics").text


def test_prompts_are_prepared_off_the_event_loop(start):
    url, service = start()
    seen, plan = [], service._plan

    def record(*args):
        seen.append(threading.current_thread().name)
        return plan(*args)

    service._plan = record
    assert chat(url, max_tokens=2).status_code == 200
    assert seen and seen[0].startswith("domaintune-prepare")


def test_a_request_past_its_deadline_is_504(start):
    url, _ = start(decode=Slow(0.05), request_timeout_s=0.3)
    response = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 200})
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"


def test_cache_log_and_metrics(start, tmp_path):
    log = tmp_path / "requests.jsonl"
    url, service = start(cache_size=4, request_log=str(log))
    first, second = chat(url, max_tokens=6, temperature=0).json(), chat(url, max_tokens=6, temperature=0).json()
    assert first["choices"] == second["choices"]
    sampled = chat(url, max_tokens=6, temperature=0.9)  # not greedy: never cached
    chat(url, model="nope")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["cached"] for r in records] == [False, True, False, False]
    assert [r["status"] for r in records] == [200, 200, sampled.status_code, 400]
    top = records[0]
    assert top["model"] == "tuned" and top["prompt"] == HELLO and top["output"] == [first["choices"][0]["message"]["content"]]
    assert top["completion_tokens"] == first["usage"]["completion_tokens"] and top["latency_s"] > 0
    metrics = httpx.get(url + "/metrics").text
    assert 'domaintune_requests_total{endpoint="chat.completions",model="tuned",status="200"} 3.0' in metrics
    assert 'domaintune_request_errors_total{endpoint="chat.completions",type="invalid_request_error"} 1.0' in metrics
    assert "domaintune_cache_hits_total 1.0" in metrics
    assert "domaintune_batch_size_count 2.0" in metrics  # two requests reached the model
    assert "domaintune_queue_depth 0.0" in metrics and "domaintune_generation_tokens_per_second" in metrics
    assert 'domaintune_request_latency_seconds_count{endpoint="chat.completions"} 4.0' in metrics


WORDS = ["hello", "river", "patient", "contract", "report", "fox", "data", "paris", "risk", "model", "today",
         "summarize", "capital", "quick", "water", "learn"]


def short_prompts(count: int) -> list[str]:
    # Deterministic, varied lengths (1-6 words), so batches mix padded and unpadded rows.
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(1 + i % 6)) for i in range(count)]


async def _ask_all(url: str, prompts: list[str]) -> list[str]:
    import asyncio

    # 32 clients at a time: enough to fill batches of 16, and httpx's pool stays cheap (its cost
    # grows with the square of the open connections).
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=32)) as client:
        async def ask(text: str) -> str:
            body = {"model": "tuned", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
                    "temperature": 0}
            async with gate:
                response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        return await asyncio.gather(*(ask(t) for t in prompts))


def test_batched_and_unbatched_greedy_outputs_agree(start):
    import asyncio

    prompts = short_prompts(200)
    outputs, batch_sizes = {}, {}
    for label, size in (("batched", 16), ("unbatched", 1)):
        url, service = start(max_batch_size=size, max_queue=256, batch_window_ms=20)
        outputs[label] = asyncio.run(_ask_all(url, prompts))
        hist = service.metrics.batch_size
        batch_sizes[label] = hist._sum.get() / sum(b.get() for b in hist._buckets)
    agree = sum(a == b for a, b in zip(outputs["batched"], outputs["unbatched"])) / len(prompts)
    assert agree >= 0.99
    assert batch_sizes["unbatched"] == 1 and batch_sizes["batched"] > 2  # batching really happened
