"""Fuzzing the HTTP API: thousands of malformed bodies, never a 5xx (serve/app.py, schemas.py).

FastAPI's TestClient (in-process, with the app's lifespan, so the engine runs) keeps each request
around a millisecond. Valid bodies that slip through still generate (at most 2 tokens).
`DOMAINTUNE_FUZZ_BODIES` sets the total bodies (default 2,000 in `make test`; the 10,000-body
run in docs/serving.md is `DOMAINTUNE_FUZZ_BODIES=10000 pytest tests/unit/serve/test_fuzz.py`).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from domaintune.serve.app import build_app
from domaintune.serve.options import ServeOptions

ENDPOINTS = ["/v1/chat/completions", "/v1/completions"]
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
          "stop", "stream", "stream_options", "logprobs", "presence_penalty", "user"]
VALID = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2}

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from(["tiny", "tuned", "other", "user", "assistant", "system", "<|im_end|>", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS + ["role", "content", "type", "text"]), inner,
                                        max_size=3), max_leaves=6)
messages = st.lists(st.fixed_dictionaries({"role": values, "content": values}), max_size=3)
bodies = (values
          | st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
          | st.builds(lambda k, v: {**VALID, k: v}, st.sampled_from(FIELDS), values)
          | st.builds(lambda m: {**VALID, "messages": m}, messages))


@pytest.fixture(scope="module")
def client(served):
    options = ServeOptions(max_tokens_limit=4, default_max_tokens=2, max_n=2, max_queue=256, batch_window_ms=0)
    with TestClient(build_app(served, options)) as test_client:
        yield test_client


BODIES = int(os.environ.get("DOMAINTUNE_FUZZ_BODIES", "2000"))


@settings(max_examples=BODIES * 3 // 4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies)
def test_malformed_json_bodies_never_5xx(client, endpoint, body):
    response = client.post(endpoint, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=BODIES - BODIES * 3 // 4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=200))
def test_raw_bytes_never_5xx(client, endpoint, raw):
    response = client.post(endpoint, content=raw)
    assert response.status_code == 400, response.text
