"""Live drift on /metrics (serve/drift.py), and the shipped Grafana dashboard and alert rules name
only metrics the server exports."""

from __future__ import annotations

import json
import re
from importlib import resources

import httpx
import yaml

from domaintune.serve.drift import LiveDrift
from domaintune.serve.metrics import ServeMetrics


def _rows(name):
    text = resources.files("domaintune.datasets").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _gauge(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_the_alarm_gauge_rises_when_traffic_leaves_the_domain():
    icd, general = _rows("icd10_chapters.jsonl"), _rows("general_prompts.jsonl")
    metrics = ServeMetrics()
    drift = LiveDrift({"icd": icd[:1500]}, metrics, window=50, every=50)
    for row in icd[1500:1550]:
        drift.observe("icd", row["messages"][:1], row["messages"][1]["content"], 0.9)
    drift.observe("other", icd[0]["messages"][:1], "x", None)  # not watched: ignored
    drift._pool.submit(lambda: None).result()  # the update runs off the request path: wait for it
    assert _gauge(metrics, "domaintune_drift_alarm", model="icd", statistic="unigram_kl") == 0.0
    assert _gauge(metrics, "domaintune_drift_alarm", model="icd", statistic="label_psi") == 0.0
    for row in general[:50]:
        drift.observe("icd", row["messages"][:1], "Neoplasms", 0.5)
    drift.close()
    assert _gauge(metrics, "domaintune_drift_alarm", model="icd", statistic="unigram_kl") == 1.0
    value = _gauge(metrics, "domaintune_drift", model="icd", statistic="unigram_kl")
    assert value > _gauge(metrics, "domaintune_drift_threshold", model="icd", statistic="unigram_kl")


def test_serve_wires_the_references_to_metrics(served, tiny_llama):
    import pytest

    from domaintune.errors import UserError
    from domaintune.serve.app import build_app
    from domaintune.serve.server import serve_in_thread

    icd = _rows("icd10_chapters.jsonl")
    with pytest.raises(UserError, match="not served"):
        build_app(served, drift_references={"nobody": icd[:100]})
    app = build_app(served, drift_references={"tuned": icd[:1500]})
    with serve_in_thread(app) as url, httpx.Client(timeout=30) as client:
        for row in icd[1500:1550]:
            client.post(url + "/v1/chat/completions", json={"model": "tuned", "messages": row["messages"][:1],
                                                           "max_tokens": 1})
        app.state.service.drift._pool.submit(lambda: None).result()
        text = client.get(url + "/metrics").text
    assert 'domaintune_drift{model="tuned",statistic="unigram_kl"}' in text


def test_dashboard_and_alerts_use_exported_metrics():
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", ServeMetrics().render()[0].decode(), re.M))
    names = set()
    for name, kind in exported:
        names |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind in (
            "counter", "histogram") else {name}
    folder = resources.files("domaintune.monitor")
    dashboard = json.loads(folder.joinpath("grafana_dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load(folder.joinpath("prometheus_alerts.yml").read_text(encoding="utf-8"))
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(domaintune_\w+)", e)}
    assert used and used <= names, used - names
