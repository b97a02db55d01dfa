"""Tests for serve/metrics.py: each app has its own registry; the exposition carries every metric."""

from __future__ import annotations

from domaintune.serve.metrics import ServeMetrics


def test_two_instances_do_not_share_counts():
    a, b = ServeMetrics(), ServeMetrics()
    a.observe_request("completions", "m", 200, 0.1)
    assert 'status="200"' not in b.render()[0].decode()
    assert 'domaintune_requests_total{endpoint="completions",model="m",status="200"} 1.0' in a.render()[0].decode()


def test_exposition_holds_the_serving_metrics():
    m = ServeMetrics()
    m.observe_batch(4)
    m.set_queue_depth(3)
    m.add_tokens("m", 40, 2.0)
    m.observe_request("chat.completions", "m", 429, 0.01, "rate_limit_error")
    text, content_type = m.render()
    text = text.decode()
    assert content_type.startswith("text/plain")
    for line in ("domaintune_batch_size_sum 4.0", "domaintune_queue_depth 3.0",
                 'domaintune_generated_tokens_total{model="m"} 40.0', "domaintune_generation_tokens_per_second 20.0",
                 'domaintune_request_errors_total{endpoint="chat.completions",type="rate_limit_error"} 1.0'):
        assert line in text, line
