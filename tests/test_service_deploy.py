"""Deployment files agree with the service: Dockerfile lint, compose vs Settings, Prometheus, Grafana."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from xscreen.service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
HADOLINT = str(Path(sys.executable).with_name("hadolint"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DETECTOR = COMPOSE["services"]["detector"]
ENV = DETECTOR["environment"]
PORT = int(ENV["XSCREEN_PORT"])


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([HADOLINT, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""  # not even a warning


def test_dockerfile_essentials():
    text = (REPO / "Dockerfile").read_text()
    # slim Python pinned by digest; torch's own wheels bring CUDA (docs/deploy.md)
    assert re.search(r"^FROM python:3\.11[\d.]*-slim\S*@sha256:[0-9a-f]{64}$", text, re.M)
    assert "-r requirements/service.txt" in text  # the lock, which pins torch (tests/test_packaging.py)
    lock = (REPO / "requirements" / "service.txt").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    for pin in re.findall(r'"(torch==[\d.]+|torchvision==[\d.]+)"', pyproject):
        assert re.search(rf"^{re.escape(pin)} ", lock, re.M), f"the image's lock does not pin {pin}"
    assert re.search(r"^USER 10001$", text, re.M)  # non-root
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert 'CMD ["xscreen", "serve"]' in text
    assert "EXPOSE 8000" in text and "XSCREEN_PORT=8000" in text


def test_compose_environment_is_made_of_real_settings():
    fields = {f"XSCREEN_{name.upper()}" for name in Settings.model_fields}
    unknown = set(ENV) - fields
    assert not unknown, f"compose sets variables the service does not read: {unknown}"
    # and the values pass the service's own validation (weights and key files are checked in the container)
    values = {k.removeprefix("XSCREEN_").lower(): v for k, v in ENV.items()}
    values.pop("api_keys_file")
    s = Settings(**values, api_keys="k" * 32)
    assert s.host == "0.0.0.0" and s.port == PORT and s.protect_metrics is True


def test_compose_ports_volumes_secrets_health():
    assert f"{PORT}:{PORT}" in DETECTOR["ports"]
    weights_dir = [v for v in DETECTOR["volumes"] if v.endswith(":/weights:ro")]
    assert weights_dir and ENV["XSCREEN_WEIGHTS"].startswith("/weights/")
    host_dir = REPO / weights_dir[0].split(":")[0]
    assert host_dir.resolve() == (REPO / "model" / "weights").resolve()
    assert ENV["XSCREEN_API_KEYS_FILE"] == "/run/secrets/xscreen_api_keys"
    assert "xscreen_api_keys" in DETECTOR["secrets"] and "xscreen_api_keys" in COMPOSE["secrets"]
    health = " ".join(DETECTOR["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/readyz" in health
    gpu = DETECTOR["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("prometheus", "grafana"):
        svc = COMPOSE["services"][name]
        assert svc["healthcheck"]["test"] and svc["ports"]
        for volume in svc["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./deploy/secrets/")
    # a graceful stop has time to finish in-flight requests
    grace = float(DETECTOR["stop_grace_period"].removesuffix("s"))
    assert grace > float(ENV["XSCREEN_GRACEFUL_TIMEOUT_S"])


def test_prometheus_scrapes_the_service():
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "xscreen")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"detector:{PORT}"]
    # /metrics is protected in compose, so Prometheus must send a key from its secret
    assert job["authorization"]["credentials_file"] == "/run/secrets/xscreen_metrics_key"
    assert "xscreen_metrics_key" in COMPOSE["services"]["prometheus"]["secrets"]
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_alert_rules_cover_latency_errors_and_readiness():
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"XscreenDetectLatencyP99AboveSLO", "XscreenErrorRatioHigh", "XscreenNotReady"} <= names
    for r in rules:
        assert r["expr"].strip() and r["labels"]["severity"] in ("warning", "critical")


def test_grafana_provisioning_and_dashboard():
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    uid = ds["datasources"][0]["uid"]
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/xscreen.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((REPO / "deploy/grafana/dashboards/xscreen.json").read_text())
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("latency", "throughput", "queue depth", "batch size", "errors by status"):
        assert topic in titles
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"]
        assert all(t["expr"] for t in panel["targets"])
