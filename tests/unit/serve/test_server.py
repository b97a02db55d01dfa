"""Tests for serve/server.py: loopback binding, and graceful shutdown finishing in-flight work."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from domaintune.models.decode import decode_stream
from domaintune.serve.app import build_app
from domaintune.serve.options import ServeOptions
from domaintune.errors import UserError
from domaintune.serve.server import _is_loopback, check_bind, serve_in_thread


def test_shutdown_finishes_requests_in_flight_then_refuses(served):
    started = threading.Event()

    def slow(model, prompts, params, pad_id, *, should_stop):
        for step in decode_stream(model, prompts, params, pad_id, should_stop=should_stop):
            started.set()
            time.sleep(0.02)
            yield step

    app = build_app(served, ServeOptions(), decode=slow)
    result = {}
    with serve_in_thread(app) as url:
        def send():
            body = {"model": "tiny", "prompt": "Hello", "max_tokens": 20, "temperature": 0}
            result["response"] = httpx.post(url + "/v1/completions", json=body, timeout=30)

        client = threading.Thread(target=send)
        client.start()
        assert started.wait(10)
    # Leaving the block asked uvicorn to exit while the request was generating: it finished first.
    client.join(10)
    response = result["response"]
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert not app.state.service.engine._thread.is_alive()  # the lifespan drained the engine
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_loopback_detection():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")


def test_an_open_non_loopback_bind_is_refused_unless_asked_for(caplog):
    check_bind("127.0.0.1", has_api_key=False)                 # loopback: fine without a key
    check_bind("0.0.0.0", has_api_key=True)                    # a key: fine anywhere
    with pytest.raises(UserError, match="--insecure-no-auth"):
        check_bind("0.0.0.0", has_api_key=False)
    check_bind("0.0.0.0", has_api_key=False, insecure_no_auth=True)
    assert "without an API key" in caplog.text
