"""The site stack, brought up for real: docker-compose.yml through podman-compose with the override
deploy/compose.standins.yml (`make site-test`; docs/deploy.md "The stack, tried with podman").

Caddy, Prometheus and Alertmanager are stand-ins built from Debian bookworm's packages
(deploy/standins/), the detector is the image built from the Dockerfile here, on the CPU; Grafana and the
DCGM exporter are left out. Secrets, models and Alertmanager's configuration are throwaway files in a
temporary folder: the secrets made as deploy/secrets/README.md says and passed by deploy/check-secrets.sh,
Alertmanager's file the site's own with its webhook pointed at a receiver run by this test.

The tests share one stack and run in file order: TLS, scraping, switching, alerting (stops the
detector), restarts (down and up again). Skipped unless XSCREEN_CONTAINER_TESTS=1; with it, a missing
tool or image fails with the command that makes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = REPO / "deploy" / "compose.standins.yml"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DETECTOR_ENV = COMPOSE["services"]["detector"]["environment"]
PROJECT = "xscreen-sitetest"
# podman-compose 1.6.0, installed outside the project's environment (GPL-2.0): make podman-compose
PODMAN_COMPOSE = Path(os.environ.get("XSCREEN_PODMAN_COMPOSE_DIR", REPO / "build/tools/podman-compose"))
DETECTOR_IMAGE = os.environ.get("XSCREEN_DETECTOR_IMAGE", "localhost/xscreen:dev")
STANDINS = [f"localhost/xscreen-standin-{s}:bookworm" for s in ("caddy", "prometheus", "alertmanager")]
# the proxy's published port in the override (a loopback port instead of the site's 443)
URL = "https://localhost:{}".format(re.search(r'"127\.0\.0\.1:(\d+):443"', OVERRIDE.read_text()).group(1))
NEXT_MODEL = "xscreen-small-lacls-0.4.1-test"
READY_WITHIN_S = 300.0

pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("XSCREEN_CONTAINER_TESTS") != "1",
        reason="brings up the compose stack with podman: make site-test (XSCREEN_CONTAINER_TESTS=1)",
    ),
]


def _seconds(text: str) -> float:
    """A Prometheus/Alertmanager duration such as 2m, 30s or 1h30m, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unexpected duration {text!r}"
    return float(sum(int(n) * units[u] for n, u in parts))


class Webhook:
    """An Alertmanager webhook receiver on the host: records each POST (arrival time, headers, JSON)."""

    def __init__(self) -> None:
        received: list[tuple[float, dict, dict]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((time.monotonic(), dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str, since: float) -> tuple[float, dict] | None:
        for at, headers, body in self.received:
            names = {a["labels"]["alertname"] for a in body["alerts"]}
            if at >= since and body["status"] == "firing" and alertname in names:
                return at, headers
        return None


class Site:
    """The running stack: podman-compose commands, containers by service, https requests."""

    def __init__(self, tmp: Path, webhook: Webhook) -> None:
        self.tmp, self.webhook = tmp, webhook
        self.secrets, self.models = tmp / "secrets", tmp / "models"
        self.cert = self.secrets / "tls_cert.pem"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(PODMAN_COMPOSE),
            "XSCREEN_SITE_SECRETS": str(self.secrets),
            "XSCREEN_SITE_MODELS": str(self.models),
            "XSCREEN_SITE_ALERTMANAGER_CONFIG": str(tmp / "alertmanager.yml"),
            "XSCREEN_DETECTOR_IMAGE": DETECTOR_IMAGE,
        }
        # what a site engineer types, and what deploy/switch-model.sh runs (XSCREEN_COMPOSE)
        self.compose_cmd = [
            str(PODMAN_COMPOSE / "bin" / "podman-compose"),
            "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), "-f", str(OVERRIDE),
        ]  # fmt: skip

    def read(self, name: str) -> str:
        return (self.secrets / name).read_text().split()[0]

    def compose(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            [*self.compose_cmd, *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, (
            f"podman-compose {' '.join(args)}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
        return proc.stdout

    def container(self, service: str) -> str:
        out = subprocess.run(
            ["podman", "ps", "-a", "--format", "{{.Names}}",
             "--filter", f"label=io.podman.compose.project={PROJECT}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, f"{service}: containers {out}"
        return out[0]

    def exec(self, service: str, *cmd: str) -> str:
        proc = subprocess.run(
            ["podman", "exec", self.container(service), *cmd], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{service}: {' '.join(cmd)}: {proc.stderr}"
        return proc.stdout

    def get(self, path: str, key: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(URL + path, headers=headers, verify=str(self.cert), timeout=60, **kw)

    def up(self) -> float:
        """`up -d --no-build`, then wait until /readyz answers 200 through the proxy; seconds it took."""
        t0 = time.monotonic()
        self.compose("up", "-d", "--no-build")
        while time.monotonic() - t0 < READY_WITHIN_S:
            try:
                if self.get("/readyz").status_code == 200:
                    return time.monotonic() - t0
            except requests.ConnectionError:
                pass
            time.sleep(1)
        logs = subprocess.run(
            ["podman", "logs", "--tail", "30", self.container("detector")], capture_output=True
        )
        pytest.fail(f"not ready through the proxy within {READY_WITHIN_S} s: {logs.stderr.decode()[-3000:]}")

    def prometheus(self, query: str) -> list[dict]:
        q = urllib.parse.quote(query)
        out = self.exec(
            "prometheus", "wget", "-q", "-O", "-", f"http://127.0.0.1:9090/api/v1/query?query={q}"
        )
        return json.loads(out)["data"]["result"]

    def audit(self) -> list[str]:
        return self.exec("detector", "cat", DETECTOR_ENV["XSCREEN_AUDIT_PATH"]).splitlines()

    def selection(self) -> dict:
        return json.loads(self.exec("detector", "cat", DETECTOR_ENV["XSCREEN_MODEL_SELECTION_FILE"]))


def _make_secrets(d: Path) -> None:
    """The eight secret files, as deploy/secrets/README.md makes them (owners and modes included)."""
    import secrets

    d.mkdir()
    metrics, api, admin = (secrets.token_urlsafe(32) for _ in range(3))
    files = {
        "metrics_key.txt": (metrics + "\n", 65534, 0o400),
        "api_keys.txt": (f"{api}\n{metrics}\n", 10001, 0o400),
        "admin_keys.txt": (admin + "\n", 10001, 0o400),
        "grafana_admin_password.txt": (secrets.token_urlsafe(24) + "\n", 472, 0o400),
        "alertmanager_smtp_password.txt": (secrets.token_urlsafe(24), 65534, 0o400),
        "alertmanager_webhook_token.txt": (secrets.token_urlsafe(32), 65534, 0o400),
    }
    for name, (text, uid, mode) in files.items():
        (d / name).write_text(text)
        os.chown(d / name, uid, -1)
        os.chmod(d / name, mode)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "90", "-nodes",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "tls_key.pem"), "-out", str(d / "tls_cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(d / "tls_key.pem", 0o400)
    os.chmod(d / "tls_cert.pem", 0o444)
    check = subprocess.run(
        ["sh", str(REPO / "deploy" / "check-secrets.sh"), str(d)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def _make_models(d: Path) -> str:
    """The models folder: the bundled 0.4.0 under compose's name and pin, and a 0.4.1 with one bias nudged
    (another sha256) to switch to; returns the new model's sha256."""
    import torch

    from tests.support.service_fixtures import bundled_weights
    from xscreen.model.weights import load_weights, save_weights

    d.mkdir()
    served = d / (DETECTOR_ENV["XSCREEN_MODEL_NAME"] + ".safetensors")
    shutil.copy(bundled_weights(), served)
    model, info = load_weights(served)
    assert info.sha256 == DETECTOR_ENV["XSCREEN_WEIGHTS_SHA256"], "the bundled weights are not compose's pin"
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("bias")).add_(1e-3)
    sha = save_weights(
        model, d / f"{NEXT_MODEL}.safetensors", metadata={"name": info.name, "version": "0.4.1-test"}
    )
    for f in d.iterdir():
        f.chmod(0o444)
    d.chmod(0o755)
    return sha


def _alertmanager_config(path: Path, webhook: Webhook) -> None:
    """The site's alertmanager.yml with its webhook URL pointed at the test's receiver on the host."""
    text = (REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    site_url = "https://alerts.example.org/hooks/xscreen"
    assert site_url in text
    path.write_text(text.replace(site_url, f"http://host.containers.internal:{webhook.port}/hooks/xscreen"))
    path.chmod(0o644)


def _missing() -> list[str]:
    missing = [] if shutil.which("podman") else ["podman: bash ../shared/tools/podman-here.sh"]
    if os.geteuid() != 0:  # rootful podman; the secrets are chowned to their readers' uids
        missing.append("root (the secret files are owned by their containers' uids)")
    if not (PODMAN_COMPOSE / "podman_compose.py").exists():
        missing.append(f"podman-compose in {PODMAN_COMPOSE}: make podman-compose")
    for image in [DETECTOR_IMAGE, *STANDINS]:
        if subprocess.run(["podman", "image", "exists", image]).returncode != 0:
            missing.append(f"image {image}: make site-images")
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    missing = _missing()
    if missing:
        pytest.fail("needs " + "; ".join(missing))
    tmp = tmp_path_factory.mktemp("site")
    webhook = Webhook()
    _make_secrets(tmp / "secrets")
    sha = _make_models(tmp / "models")
    _alertmanager_config(tmp / "alertmanager.yml", webhook)
    s = Site(tmp, webhook)
    s.next_sha = sha
    s.compose("down", "--volumes")  # leftovers of an interrupted run
    failed = request.session.testsfailed
    try:
        s.ready_s = s.up()
        print(f"\nsite: ready through the proxy {s.ready_s:.1f} s after `podman-compose up -d`")
        yield s
    finally:
        if request.session.testsfailed != failed:
            for service in ("proxy", "detector", "prometheus", "alertmanager"):
                logs = subprocess.run(
                    ["podman", "logs", "--tail", "15", s.container(service)], capture_output=True
                )
                print(f"--- {service}\n{logs.stdout.decode()[-2000:]}{logs.stderr.decode()[-2000:]}")
        s.compose("down", "--volumes")
        webhook.server.shutdown()


def _head_answer(site, head: bytes) -> bytes:
    """What the site answers first to a request head sent over TLS (no body sent)."""
    port = int(URL.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(site.cert))
    with (
        socket.create_connection(("localhost", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(head)
        return sock.recv(65536)


def test_tls_proxy_serves_detect_and_hides_metrics_and_admin(site):
    from tests.support.service_fixtures import easy_scans

    api, metrics, admin = site.read("api_keys.txt"), site.read("metrics_key.txt"), site.read("admin_keys.txt")
    with pytest.raises(requests.exceptions.SSLError):  # the test's self-signed certificate, not a public one
        requests.get(URL + "/readyz", timeout=10)
    scan = easy_scans(1, 640, start_seed=7)[0]
    files = {"high": ("high.png", scan.png()[0]), "low": ("low.png", scan.png()[1])}
    answer = requests.post(
        URL + "/detect",
        files=files,
        headers={"Authorization": f"Bearer {api}"},
        verify=str(site.cert),
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    detections = answer.json()["detections"]
    assert {d["class_name"] for d in detections} & set(scan.names), (detections, scan.names)
    # without a key: the proxy's answer to the head, before the scan is sent (Expect: 100-continue, as curl
    # sends for a body over 1 MiB; the Caddyfile's expect_continue_timeout); a client that pushes a large
    # body regardless may see the connection closed instead: Caddy (Go) closes with over 256 KiB unread
    head = _head_answer(
        site,
        b"POST /detect HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 3000000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in head, head[:300]
    assert site.get("/metrics", key=metrics).status_code == 404
    assert site.get("/admin/model", key=admin).status_code == 404
    body = {"name": NEXT_MODEL, "sha256": site.next_sha}
    headers = {"Authorization": f"Bearer {admin}"}
    assert (
        requests.post(URL + "/admin/model", json=body, headers=headers, verify=str(site.cert)).status_code
        == 404
    )
    # compose's healthchecks, run as podman would (no systemd timers here)
    for service in ("proxy", "detector", "prometheus", "alertmanager"):
        check = subprocess.run(["podman", "healthcheck", "run", site.container(service)], capture_output=True)
        assert check.returncode == 0, (service, check.stdout, check.stderr)


def test_prometheus_scrapes_the_detector_with_the_metrics_key(site):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        up = {r["metric"]["job"]: r["value"][1] for r in site.prometheus("up")}
        if up.get("xscreen") == "1" and up.get("alertmanager") == "1":
            break
        time.sleep(2)
    assert up.get("xscreen") == "1" and up.get("alertmanager") == "1", up
    ready = site.prometheus('xscreen_ready{job="xscreen"}')
    assert [r["value"][1] for r in ready] == ["1"]
    # the detect of the TLS test, counted by the detector and scraped through the internal network
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        served = site.prometheus('sum(xscreen_http_requests_total{route="/detect",status="200"})')
        if served and float(served[0]["value"][1]) >= 1:
            break
        time.sleep(2)
    assert served and float(served[0]["value"][1]) >= 1, served


def test_switch_model_script_against_the_stack(site):
    compose = " ".join(site.compose_cmd)
    proc = subprocess.run(
        ["sh", str(REPO / "deploy" / "switch-model.sh"), NEXT_MODEL, site.next_sha],
        env={**site.env, "XSCREEN_COMPOSE": compose},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["result"] == "switched" and answer["persisted"] is True, answer
    assert answer["previous_sha256"] == DETECTOR_ENV["XSCREEN_WEIGHTS_SHA256"]
    served = site.get("/model", key=site.read("api_keys.txt")).json()
    assert (served["model_name"], served["sha256"]) == (NEXT_MODEL, site.next_sha)
    assert site.selection()["sha256"] == site.next_sha


def test_detector_down_alert_reaches_the_webhook_through_alertmanager(site):
    rule = next(
        r
        for g in yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == "XscreenDown"
    )
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())["global"]
    am = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())["route"]
    hold = _seconds(rule["for"])
    # the scrape that fails, the evaluation that sees it, the `for`, the evaluation that fires it, then
    # Alertmanager's group_wait; 60 s on top for slow machines
    bound = (
        _seconds(prom["scrape_interval"])
        + 2 * _seconds(prom["evaluation_interval"])
        + hold
        + _seconds(am["group_wait"])
        + 60
    )
    site.compose("stop", "detector", timeout=120)
    stopped = time.monotonic()
    got = None
    while got is None and time.monotonic() - stopped < bound:
        time.sleep(1)
        got = site.webhook.firing("XscreenDown", stopped)
    received = [body for _, _, body in site.webhook.received]
    assert got is not None, f"no XscreenDown within {bound:.0f} s; received {received}"
    delay = got[0] - stopped
    print(
        f"\nsite: XscreenDown reached the webhook {delay:.1f} s after the detector stopped "
        f"(for {hold:.0f} s, bound {bound:.0f} s)"
    )
    assert delay >= hold, "fired before its `for`"
    assert got[1]["Authorization"] == "Bearer " + site.read("alertmanager_webhook_token.txt")


def test_down_and_up_keep_the_audit_trail_and_the_model_selection(site):
    site.compose("start", "detector")
    deadline = time.monotonic() + READY_WITHIN_S
    while site.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    audit, selection = site.audit(), site.selection()
    assert len(audit) >= 1 and json.loads(audit[0])
    site.compose("down", timeout=300)
    ready_s = site.up()
    print(f"\nsite: ready again {ready_s:.1f} s after `podman-compose up -d` (down, up: volumes kept)")
    assert site.audit()[: len(audit)] == audit
    assert site.selection() == selection
    served = site.get("/model", key=site.read("api_keys.txt")).json()
    assert (served["model_name"], served["sha256"]) == (NEXT_MODEL, site.next_sha)
