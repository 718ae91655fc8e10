"""Operations metrics and device rules on a real ``xscreen serve`` on loopback: process metrics, series at 0
before any event, latency bucket edges at the alert thresholds, the metrics the alerts read, and device
strictness (cuda without a GPU refuses to start; auto warns when it serves on CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service_fixtures import XSCREEN, ServiceProcess, bundled_weights
from xscreen.service.metrics import LATENCY_BUCKETS, LATENCY_SLO_SECONDS, REJECT_REASONS

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One service (device auto, bundled weights, no warm-up) and its /metrics after one /healthz."""
    log = tmp_path_factory.mktemp("ops") / "serve.log"
    srv = ServiceProcess(log, weights=bundled_weights(), device="auto", warmup="false").start()
    try:
        srv.wait_ready()
        assert requests.get(srv.url + "/healthz", timeout=10).status_code == 200
        text = requests.get(srv.url + "/metrics", timeout=10).text
    finally:
        assert srv.stop() == 0
    return text, srv.log()


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_process_and_platform_metrics_are_exported(served):
    text, _ = served
    values = {s.name: s.value for s in samples(text) if not s.labels}
    assert values["process_resident_memory_bytes"] > 50e6  # a torch process holds far more than 50 MB
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_start_time_seconds"] > 1.6e9
    assert values["process_open_fds"] > 0
    assert re.search(r'^python_info\{implementation="CPython",major="3"', text, re.M)
    assert "python_gc_collections_total" in text


def test_refusal_and_error_series_exist_at_zero_before_any_event(served):
    text, _ = served
    rejected = {
        s.labels["reason"]: s.value for s in samples(text) if s.name == "xscreen_rejected_requests_total"
    }
    assert rejected == {reason: 0.0 for reason in REJECT_REASONS} and "queue_full" in rejected
    requests_total = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in samples(text)
        if s.name == "xscreen_http_requests_total" and s.labels["method"] == "POST"
    }
    for status in ("200", "500", "503", "504"):
        assert requests_total[("/detect", status)] == 0.0
    detections = [s for s in samples(text) if s.name == "xscreen_detections_total"]
    assert len(detections) == 12 and all(s.value == 0 for s in detections)  # the 12 CLCXray classes


def test_latency_buckets_have_an_edge_at_every_alert_threshold(served):
    text, _ = served
    edges = {
        float(s.labels["le"])
        for s in samples(text)
        if s.name == "xscreen_http_request_duration_seconds_bucket" and s.labels["route"] == "/healthz"
    }
    assert edges == set(LATENCY_BUCKETS) | {float("inf")}
    assert LATENCY_SLO_SECONDS == 2.0 and {1.5, 2.0, 2.5} <= edges
    # every le the alert rules name is an edge the service exports, spelt as the exposition spells it
    rules_le = re.findall(r'le="([^"]+)"', ALERTS.read_text())
    assert rules_le and all(f'le="{le}"' in text and float(le) in edges for le in rules_le)


def test_every_metric_the_alerts_read_is_exported(served):
    text, _ = served
    exported = {s.name for s in samples(text)}
    exprs = " ".join(
        r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r
    )
    used = set(re.findall(r"\bxscreen_[a-z_]+", exprs))
    assert {"xscreen_model_info", "xscreen_queue_depth", "xscreen_http_requests_total"} <= used
    assert used <= exported, f"alerts read metrics the service does not export: {used - exported}"
    info = [s for s in samples(text) if s.name == "xscreen_model_info"]
    assert len(info) == 1 and info[0].value == 1 and info[0].labels["device"] in ("cpu", "cuda")


def test_auto_device_warns_in_the_log_when_it_serves_on_cpu(served):
    text, log = served
    device = next(s.labels["device"] for s in samples(text) if s.name == "xscreen_model_info")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    warned = [e for e in lines if e["level"] == "warning" and "XSCREEN_DEVICE=auto" in e["msg"]]
    if device == "cpu":
        assert len(warned) == 1, log
        assert warned[0]["device"] == "cpu" and "no usable CUDA device" in warned[0]["msg"]
    else:
        assert warned == []


def test_cuda_device_without_a_gpu_refuses_to_start_with_one_line(served):
    text, _ = served
    if next(s.labels["device"] for s in samples(text) if s.name == "xscreen_model_info") == "cuda":
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    proc = subprocess.run(
        [XSCREEN, "serve", "--device", "cuda", "--weights", str(bundled_weights()), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "XSCREEN_DEVICE": "cpu"},  # the flag wins over the variable
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "xscreen serve: error: device 'cuda' requested but no CUDA device is available (use auto or cpu)\n"
    )
    assert proc.stdout == ""
