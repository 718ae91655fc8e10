"""Deployment files agree with the service: Dockerfile lint, compose vs Settings and the Compose schema,
the compose detector's settings on a real server (models folder, sha256 pin, admin key, audit trail), the
TLS proxy, the secrets recipe and its check, Prometheus, Grafana."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.tools import tool
from xscreen.service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HADOLINT = str(Path(sys.executable).with_name("hadolint"))
CHECK_JSONSCHEMA = str(Path(sys.executable).with_name("check-jsonschema"))
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DETECTOR = COMPOSE["services"]["detector"]
ENV = DETECTOR["environment"]
PORT = int(ENV["XSCREEN_PORT"])
SECRETS_README = REPO / "deploy" / "secrets" / "README.md"
CHECK_SECRETS = REPO / "deploy" / "check-secrets.sh"
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"
SWITCH_MODEL = REPO / "deploy" / "switch-model.sh"
# uid of the process that reads each compose secret (images: caddy root, xscreen 10001, Prometheus and
# Alertmanager nobody, Grafana 472)
SECRET_READERS = {
    "tls_cert": 0,
    "tls_key": 0,
    "xscreen_api_keys": 10001,
    "xscreen_admin_keys": 10001,
    "xscreen_metrics_key": 65534,
    "grafana_admin_password": 472,
    "alertmanager_smtp_password": 65534,
    "alertmanager_webhook_token": 65534,
}


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([HADOLINT, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""  # not even a warning


def test_dockerfile_essentials():
    text = (REPO / "Dockerfile").read_text()
    # slim Python pinned by digest, the default of a build argument that a stand-in base replaces
    # (tests/deploy/test_image.py); torch's own wheels bring CUDA (docs/deploy.md)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11[\d.]*-slim\S*@sha256:[0-9a-f]{64}$", text, re.M)
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ${BASE_IMAGE} AS deps\n")
    # the lock, which pins torch (tests/deploy/test_packaging.py)
    assert "-r requirements/service.txt" in text
    lock = (REPO / "requirements" / "service.txt").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    for pin in re.findall(r'"(torch==[\d.]+|torchvision==[\d.]+)"', pyproject):
        assert re.search(rf"^{re.escape(pin)} ", lock, re.M), f"the image's lock does not pin {pin}"
    assert re.search(r"^USER 10001$", text, re.M)  # non-root
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert 'CMD ["xscreen", "serve"]' in text
    assert "EXPOSE 8000" in text and "XSCREEN_PORT=8000" in text
    # the state volume's mount point exists before USER, owned by the service user: a new named volume
    # copies it, so uid 10001 can write the audit trail and the model selection there
    state = next(v.split(":")[1] for v in DETECTOR["volumes"] if v.startswith("detector-state:"))
    run = re.search(
        rf"^RUN mkdir -p {re.escape(state)}(/\S*)? && chown -R 10001 {re.escape(state)}$", text, re.M
    )
    assert run and run.start() < text.index("\nUSER 10001")


def test_compose_environment_is_made_of_real_settings(tmp_path):
    fields = {f"XSCREEN_{name.upper()}" for name in Settings.model_fields}
    unknown = set(ENV) - fields
    assert not unknown, f"compose sets variables the service does not read: {unknown}"
    # and the values pass the service's own validation (weights and key files are checked in the container)
    values = {k.removeprefix("XSCREEN_").lower(): v for k, v in ENV.items()}
    values.pop("api_keys_file"), values.pop("admin_keys_file")
    with pytest.raises(ValueError, match="cannot list models directory /models"):
        Settings(**values, api_keys="k" * 32)  # /models exists only in the container
    s = Settings(**_local(values, tmp_path), api_keys="k" * 32)
    assert s.weights == tmp_path / "models" / f"{ENV['XSCREEN_MODEL_NAME']}.safetensors"
    assert s.host == "0.0.0.0" and s.port == PORT and s.protect_metrics is True


def _local(values: dict[str, str], root: Path) -> dict[str, str]:
    """Compose's settings with the container's paths moved under ``root``; the models folder holds the
    bundled file under the compose name (a fresh site's first step, deploy/models/README.md)."""
    from xscreen.inference.settings import bundled_weights_path

    models = root / "models"
    models.mkdir()
    (models / f"{values['model_name']}.safetensors").symlink_to(bundled_weights_path())
    moved = {k: v.replace("/var/lib/xscreen", str(root / "state")) for k, v in values.items()}
    return {**moved, "models_dir": str(models)}


def test_compose_pins_the_bundled_model_by_the_sha256_in_its_header():
    from xscreen.model.weights import load_weights, read_header

    path = REPO / "model" / "weights" / "xscreen-small-lacls.safetensors"
    header = read_header(path)
    assert ENV["XSCREEN_WEIGHTS_SHA256"] == header["sha256"]
    assert ENV["XSCREEN_MODEL_NAME"] == f"xscreen-small-lacls-{header['version']}"  # versioned name
    assert load_weights(path)[1].sha256 == header["sha256"]  # and the tensors really hash to it
    readme = (REPO / "deploy" / "models" / "README.md").read_text()
    name = ENV["XSCREEN_MODEL_NAME"]
    step = f"cp model/weights/xscreen-small-lacls.safetensors deploy/models/{name}.safetensors"
    assert step in readme and step in (REPO / "docs" / "operations.md").read_text()


def test_the_compose_detector_settings_serve_audit_and_switch_on_a_real_server(tmp_path):
    """The detector's compose environment (container paths moved to tmp_path, CPU, loopback): it loads
    the pinned model from the models folder, audits a scan with the key's id, and the admin key (its own
    secret, not a scan key) confirms the model, persisted in the selection file on the state volume."""
    import hashlib

    import requests

    from tests.support.service_fixtures import InThreadServer, easy_scans, metric_value, post_scan

    values = {k.removeprefix("XSCREEN_").lower(): v for k, v in ENV.items()}
    values = _local(values, tmp_path)
    scan_key, admin_key = "s" * 40, "a" * 40
    (tmp_path / "api_keys.txt").write_text(scan_key + "\n")
    (tmp_path / "admin_keys.txt").write_text(admin_key + "\n")
    assert values.pop("api_keys_file") == "/run/secrets/xscreen_api_keys"
    assert values.pop("admin_keys_file") == "/run/secrets/xscreen_admin_keys"
    for name in ("host", "port", "device"):
        values.pop(name)
    state = tmp_path / "state"
    assert values["audit_path"] == str(state / "audit" / "audit.jsonl")
    pin, name = ENV["XSCREEN_WEIGHTS_SHA256"], ENV["XSCREEN_MODEL_NAME"]
    scan = easy_scans(1, 128)[0]
    with InThreadServer(
        **values,
        device="cpu",
        api_keys_file=str(tmp_path / "api_keys.txt"),
        admin_keys_file=str(tmp_path / "admin_keys.txt"),
    ) as srv:
        r = post_scan(srv.url, *scan.png(), key=scan_key, scan_id="bag-1")
        assert r.status_code == 200, r.text
        model = requests.get(srv.url + "/model", headers={"Authorization": f"Bearer {scan_key}"}).json()
        assert (model["model_name"], model["sha256"]) == (name, pin)
        body = {"name": name, "sha256": pin}
        refused = requests.post(
            srv.url + "/admin/model", json=body, headers={"Authorization": f"Bearer {scan_key}"}
        )
        assert refused.status_code == 401, refused.text
        # deploy/switch-model.sh's Python, as `docker compose exec detector` runs it (the container's env)
        script = re.search(r"<<'PY'\n(.*?)^PY$", SWITCH_MODEL.read_text(), re.S | re.M).group(1)
        env = dict(
            os.environ, XSCREEN_PORT=str(srv.port), XSCREEN_ADMIN_KEYS_FILE=str(tmp_path / "admin_keys.txt")
        )
        ok = subprocess.run(
            [sys.executable, "-", name, pin],
            input=script,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout) == {
            "result": "unchanged",
            "persisted": True,
            "previous_sha256": pin,
            "model_name": name,
            "version": name.removeprefix("xscreen-small-lacls-"),  # compose's name carries the version
            "sha256": pin,
        }
        missing = subprocess.run(
            [sys.executable, "-", "no-such-model", pin], input=script, capture_output=True, text=True, env=env
        )
        assert missing.returncode == 1 and missing.stdout.startswith("404 ") and name in missing.stdout
        metrics = requests.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {scan_key}"}).text
        assert metric_value(metrics, "xscreen_audit_records_total") == 1
        assert metric_value(metrics, "xscreen_model_reloads_total", result="unchanged") == 1
        assert metric_value(metrics, "xscreen_model_reloads_total", result="not_found") == 1
    records = [json.loads(line) for line in (state / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [(r["scan_id"], r["model"]["sha256"], r["route"]) for r in records] == [("bag-1", pin, "/detect")]
    assert records[0]["key_id"] == hashlib.sha256(scan_key.encode()).hexdigest()[:12]
    assert json.loads((state / "model-selection.json").read_text()) == body


def test_compose_validates_against_the_compose_specification(tmp_path):
    assert Path(CHECK_JSONSCHEMA).exists(), "check-jsonschema missing: pip install -e '.[dev]'"
    proc = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(REPO / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and the check is real: a misspelt key is refused
    broken = (REPO / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace_periode:")
    (tmp_path / "compose.yml").write_text(broken)
    proc = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "compose.yml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "stop_grace_periode" in proc.stdout + proc.stderr


def test_only_the_tls_proxy_is_published():
    published = {name for name, svc in COMPOSE["services"].items() if svc.get("ports")}
    assert published == {"proxy"}
    assert COMPOSE["services"]["proxy"]["ports"] == ["443:443"]
    assert COMPOSE["networks"]["internal"]["internal"] is True
    for name in ("detector", "prometheus", "alertmanager", "grafana", "dcgm-exporter"):
        assert "internal" in COMPOSE["services"][name]["networks"], name
    # only the proxy reaches the published network; only Alertmanager has a way out (mail, webhook)
    for name, svc in COMPOSE["services"].items():
        outside = set(svc["networks"]) - {"internal"}
        assert outside == {"proxy": {"edge"}, "alertmanager": {"egress"}}.get(name, set()), name
        assert not any(COMPOSE["networks"][n].get("internal") for n in outside), name
    proxy = COMPOSE["services"]["proxy"]
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+-alpine(@sha256:[0-9a-f]{64})?", proxy["image"])
    assert "./deploy/caddy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert set(proxy["secrets"]) == {"tls_cert", "tls_key"}
    # every image is pinned to a version (no latest, no bare name)
    for name, svc in COMPOSE["services"].items():
        assert re.search(r":[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?$", svc["image"]), (name, svc["image"])


def test_caddyfile_routes_the_api_and_grafana_with_the_secret_certificate():
    text = CADDYFILE.read_text()
    assert "tls {$XSCREEN_TLS_CERT:/run/secrets/tls_cert} {$XSCREEN_TLS_KEY:/run/secrets/tls_key}" in text
    assert re.search(r"handle /grafana\* \{\s*reverse_proxy grafana:3000", text)
    assert re.search(r"handle \{\s*reverse_proxy detector:8000", text)
    assert re.search(r'handle /metrics\* \{\s*respond "not found" 404', text)
    # model switching is not served to the outside: admin from the host only (docs/operations.md)
    assert re.search(r'handle /admin\* \{\s*respond "not found" 404', text)
    assert text.index("handle /admin*") < text.index("reverse_proxy detector:8000")
    grafana = COMPOSE["services"]["grafana"]["environment"]
    assert grafana["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert grafana["GF_SERVER_ROOT_URL"].endswith("/grafana/")


def _caddy_validate(tmp_path: Path, cert: Path, key: Path) -> subprocess.CompletedProcess:
    caddy = tool("caddy", "caddy")
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    env.update(XSCREEN_TLS_CERT=str(cert), XSCREEN_TLS_KEY=str(key))
    return subprocess.run(
        [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _make_secrets(tmp_path: Path) -> Path:
    """Run every sh block of deploy/secrets/README.md, in order, in an empty secrets folder (as root, the
    ``sudo`` prefix dropped): the recipe a site follows."""
    if os.geteuid() != 0:
        pytest.skip("the recipe's chown needs root")
    blocks = re.findall(r"```sh\n(.*?)```", SECRETS_README.read_text(), re.S)
    assert len(blocks) >= 3
    script = "set -eu\n" + "\n".join(blocks).replace("sudo ", "")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XSCREEN_SITE_HOST"}
    proc = subprocess.run(["sh", "-c", script], cwd=secrets, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return secrets


def _check_secrets(secrets: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(CHECK_SECRETS), str(secrets)], capture_output=True, text=True)


def test_secrets_recipe_creates_every_compose_secret_readable_by_its_container(tmp_path):
    secrets = _make_secrets(tmp_path)
    files = {name: Path(spec["file"]).name for name, spec in COMPOSE["secrets"].items()}
    assert set(files) == set(SECRET_READERS)
    # and the review console's (deploy/compose.console.yml, only when it is added): the detector reads it
    console = yaml.safe_load((REPO / "deploy" / "compose.console.yml").read_text())["secrets"]
    (reviewers,) = [Path(spec["file"]).name for spec in console.values()]
    assert {p.name for p in secrets.iterdir()} == set(files.values()) | {reviewers}
    st = (secrets / reviewers).stat()
    assert st.st_uid == SECRET_READERS["xscreen_api_keys"] and not st.st_mode & (stat.S_IRGRP | stat.S_IROTH)
    for name, filename in files.items():
        st = (secrets / filename).stat()
        assert st.st_size > 0
        assert st.st_uid == SECRET_READERS[name], (filename, st.st_uid)
        assert st.st_mode & stat.S_IRUSR
        # nobody else may read a key or password (the certificate is public)
        assert bool(st.st_mode & stat.S_IROTH) == (name == "tls_cert"), (filename, oct(st.st_mode))
    keys = (secrets / "api_keys.txt").read_text().split()
    assert (secrets / "metrics_key.txt").read_text().strip() in keys
    assert all(len(k) >= 16 for k in keys)
    # every service mounts secrets that exist, and names each in the check script with its reader's uid
    for name, svc in COMPOSE["services"].items():
        assert set(svc.get("secrets", [])) <= set(files), name
    listed = re.findall(r"^(\S+\.(?:pem|txt)) (\d+) (\S+) ", CHECK_SECRETS.read_text(), re.M)
    assert {(secret, int(uid)) for _f, uid, secret in listed} == set(SECRET_READERS.items())
    proc = _check_secrets(secrets)
    assert proc.returncode == 0, proc.stderr
    assert "all 8 secrets" in proc.stdout
    admin = (secrets / "admin_keys.txt").read_text().split()
    assert len(admin) == 1 and len(admin[0]) >= 16 and not set(admin) & set(keys)
    reviewer = (secrets / reviewers).read_text().split()
    assert len(reviewer) == 1 and len(reviewer[0]) >= 16 and not set(reviewer) & set(keys + admin)
    # the proxy's configuration loads the recipe's certificate
    proc = _caddy_validate(tmp_path, secrets / "tls_cert.pem", secrets / "tls_key.pem")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Valid configuration" in proc.stdout + proc.stderr


def test_check_models_names_each_file_the_detector_cannot_read(tmp_path):
    """deploy/check-models.sh on a models folder: the compose model readable by uid 10001 passes; a copy
    made by root with mode 0600 (which stops the detector with "permission denied") is named with the fix."""
    from xscreen.inference.settings import bundled_weights_path

    check = REPO / "deploy" / "check-models.sh"
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    served = models / f"{ENV['XSCREEN_MODEL_NAME']}.safetensors"
    served.write_bytes(bundled_weights_path().read_bytes())
    served.chmod(0o444)
    proc = subprocess.run(["sh", str(check), str(models)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"check-models: 1 model file(s) in {models}, all readable by uid 10001 (the detector)\n"
    )
    locked = models / "next.safetensors"
    locked.write_bytes(served.read_bytes())
    locked.chmod(0o600)  # owned by whoever runs the test, which is not uid 10001
    served.unlink()
    proc = subprocess.run(["sh", str(check), str(models)], capture_output=True, text=True)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 3, proc.stderr
    assert lines[0] == (
        f"{locked}: not readable by uid 10001 (the detector; owner uid {os.geteuid()}, mode 600): "
        f"sudo chmod 0444 {locked}"
    )
    assert lines[1].startswith(f"{served}: missing: docker-compose.yml serves XSCREEN_MODEL_NAME=")
    assert lines[2] == f"check-models: 2 problem(s) in {models}; the detector would not start or not switch"


def test_missing_or_wrong_secrets_get_one_clear_line_each(tmp_path):
    secrets = _make_secrets(tmp_path)
    (secrets / "grafana_admin_password.txt").unlink()
    (secrets / "alertmanager_webhook_token.txt").unlink()
    (secrets / "alertmanager_webhook_token.txt").mkdir()  # what an old compose leaves for a missing file
    os.chown(secrets / "api_keys.txt", 1234, -1)
    # an admin key that is also a scan key: every scanner client could switch models
    with open(secrets / "admin_keys.txt", "a") as f:
        f.write((secrets / "metrics_key.txt").read_text())
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "o.pem"],
        cwd=secrets,
        check=True,
        capture_output=True,
    )
    os.replace(secrets / "o.pem", secrets / "tls_key.pem")
    proc = _check_secrets(secrets)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("check-secrets: 5 problem(s)")
    text = "\n".join(lines)
    assert f"{secrets}/grafana_admin_password.txt: missing (compose secret grafana_admin_password" in text
    assert "deploy/secrets/README.md" in text
    assert f"{secrets}/alertmanager_webhook_token.txt: is a directory" in text
    assert f"{secrets}/api_keys.txt: not readable by uid 10001 (detector): sudo chown 10001" in text
    assert f"{secrets}/tls_key.pem: does not match the certificate" in text
    assert f"{secrets}/admin_keys.txt: 1 admin key(s) also in {secrets}/api_keys.txt" in text
    # Caddy's own refusal names the certificate file it cannot open
    proc = _caddy_validate(tmp_path, secrets / "no_such_cert.pem", secrets / "tls_key.pem")
    assert proc.returncode != 0
    assert f"loading certificates: open {secrets}/no_such_cert.pem: no such file or directory" in proc.stderr


def test_compose_volumes_secrets_health():
    assert "ports" not in DETECTOR and str(PORT) in DETECTOR["expose"]
    # versioned model files from a host folder, read-only; no fixed weights file
    assert "./deploy/models:/models:ro" in DETECTOR["volumes"] and ENV["XSCREEN_MODELS_DIR"] == "/models"
    assert (REPO / "deploy" / "models" / "README.md").exists() and "XSCREEN_WEIGHTS" not in ENV
    assert re.fullmatch(r"[0-9a-f]{64}", ENV["XSCREEN_WEIGHTS_SHA256"])
    # selection file and audit trail on the named state volume (writable by 10001: the Dockerfile test)
    assert "detector-state:/var/lib/xscreen" in DETECTOR["volumes"] and "detector-state" in COMPOSE["volumes"]
    for var in ("XSCREEN_MODEL_SELECTION_FILE", "XSCREEN_AUDIT_PATH"):
        assert ENV[var].startswith("/var/lib/xscreen/"), var
    assert ENV["XSCREEN_API_KEYS_FILE"] == "/run/secrets/xscreen_api_keys"
    assert ENV["XSCREEN_ADMIN_KEYS_FILE"] == "/run/secrets/xscreen_admin_keys"
    for secret in ("xscreen_api_keys", "xscreen_admin_keys"):
        assert secret in DETECTOR["secrets"] and secret in COMPOSE["secrets"]
    health = " ".join(DETECTOR["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/readyz" in health
    gpu = DETECTOR["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert ENV["XSCREEN_DEVICE"] == "cuda"  # no GPU: refuse to start rather than serve on CPU
    for name in ("proxy", "prometheus", "alertmanager", "grafana"):
        svc = COMPOSE["services"][name]
        assert svc["healthcheck"]["test"]
        for volume in svc["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./deploy/secrets/")
    # a graceful stop has time to finish in-flight requests
    grace = float(DETECTOR["stop_grace_period"].removesuffix("s"))
    assert grace > float(ENV["XSCREEN_GRACEFUL_TIMEOUT_S"])


def test_gpu_profile_runs_the_dcgm_exporter_and_prometheus_scrapes_it():
    dcgm = COMPOSE["services"]["dcgm-exporter"]
    assert dcgm["profiles"] == ["gpu"]
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s/dcgm-exporter:[\w.-]+(@sha256:[0-9a-f]{64})?", dcgm["image"])
    assert dcgm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "dcgm")
    assert job["static_configs"][0]["targets"] == ["dcgm-exporter:9400"]
    # every profile-less service starts without the GPU exporter
    assert all("profiles" not in svc for name, svc in COMPOSE["services"].items() if name != "dcgm-exporter")


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
    for topic in ("latency", "throughput", "queue depth", "batch size", "errors by status", "gpu", "memory"):
        assert topic in titles
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "process_resident_memory_bytes"):
        assert metric in exprs
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"]
        assert all(t["expr"] for t in panel["targets"])


def test_console_override_turns_on_the_store_and_reviewer_keys(tmp_path):
    """deploy/compose.console.yml: real settings (the store in the detector's state volume, the reviewer
    keys from a compose secret the secrets recipe creates), valid against the Compose specification."""
    override = yaml.safe_load((REPO / "deploy" / "compose.console.yml").read_text())
    detector = override["services"]["detector"]
    env = detector["environment"]
    fields = {f"XSCREEN_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    assert env["XSCREEN_STORE_DIR"].startswith("/var/lib/xscreen/")  # the detector-state volume
    (secret,) = detector["secrets"]
    assert env["XSCREEN_REVIEWER_KEYS_FILE"] == f"/run/secrets/{secret}"
    source = override["secrets"][secret]["file"]
    assert source.startswith("./deploy/secrets/")  # paths resolve from the project folder
    recipe = (REPO / "deploy" / "secrets" / "README.md").read_text()
    assert f"> {Path(source).name}" in recipe and f"`{secret}`" in recipe
    path = str(REPO / "deploy" / "compose.console.yml")
    proc = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = {k.removeprefix("XSCREEN_").lower(): v for k, v in env.items() if not k.endswith("_FILE")}
    s = Settings(**values, api_keys="k" * 32)
    assert s.store_max_bytes == 20 * 2**30 and s.store_max_age_s == 7 * 24 * 3600
