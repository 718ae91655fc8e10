"""Prometheus and Alertmanager files pass their own tools: promtool check config/rules, test rules, amtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.tools import tool

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=120)


def alert_names(path: Path = ALERTS) -> set[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = tool("promtool", "prometheus")
    # The config names container paths (/etc/prometheus/alerts.yml, /run/secrets/...): point them at
    # the repository's rules and a stand-in key file, change nothing else.
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    key = tmp_path / "metrics_key.txt"
    key.write_text("k" * 32 + "\n")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            assert job["authorization"]["credentials_file"].startswith("/run/secrets/")
            job["authorization"]["credentials_file"] = str(key)
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    proc = run(promtool, "check", "config", checked)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    # alerts go to the compose service alertmanager
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_alert_rules_pass_promtool_check():
    promtool = tool("promtool", "prometheus")
    proc = run(promtool, "check", "rules", ALERTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in proc.stdout


def test_alerts_cover_the_required_conditions():
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    exprs = {name: " ".join(r["expr"].split()) for name, r in rules.items()}
    assert 'xscreen_model_info{device!="cuda"}' in exprs["XscreenGpuAbsent"]
    assert 'le="2.0"' in exprs["XscreenDetectLatencyP99AboveSLO"]
    assert 'status=~"5.."' in exprs["XscreenErrorRatioHigh"]
    assert "xscreen_queue_depth / xscreen_queue_capacity" in exprs["XscreenQueueSaturated"]
    assert exprs["XscreenDown"] == 'up{job="xscreen"} == 0'
    # one failed audit write is one refused scan: fire at once, critical
    audit = rules["XscreenAuditWriteFailing"]
    assert exprs["XscreenAuditWriteFailing"] == (
        "sum by (instance, reason) (increase(xscreen_audit_failures_total[5m])) > 0"
    )
    assert "for" not in audit and audit["labels"]["severity"] == "critical"
    # every reload result but the two good ones is a failed switch (service/model_switch.py RELOAD_RESULTS)
    from xscreen.service.model_switch import RELOAD_RESULTS

    reload = rules["XscreenModelReloadFailed"]
    assert 'result!~"switched|unchanged"' in exprs["XscreenModelReloadFailed"]
    assert {"switched", "unchanged"} < set(RELOAD_RESULTS)
    assert exprs["XscreenModelReloadFailed"].endswith("> 0") and reload["labels"]["severity"] == "warning"
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_every_alert_has_promtool_unit_tests_and_they_pass():
    promtool = tool("promtool", "prometheus")
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    tested: set[str] = set()
    fired: set[str] = set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in spec["rule_files"]] == [ALERTS.resolve()]
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.add(check["alertname"])
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert tested == alert_names(), f"alerts without a unit test: {alert_names() - tested}"
    assert fired == alert_names(), f"alerts never shown firing: {alert_names() - fired}"
    proc = run(promtool, "test", "rules", *RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_tests_catch_a_wrong_latency_threshold(tmp_path):
    """The unit tests can fail: against a rule counting from the 2.5 s edge instead of the 2 s one, they
    catch the missed 2 %-at-2.4 s case."""
    promtool = tool("promtool", "prometheus")
    text = ALERTS.read_text()
    edge = 'status="200",le="2.0"}'
    assert text.count(edge) == 1
    (tmp_path / "alerts.yml").write_text(text.replace(edge, 'status="200",le="2.5"}'))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    proc = run(promtool, "test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert proc.returncode != 0
    assert "XscreenDetectLatencyP99AboveSLO" in proc.stdout + proc.stderr


def test_alertmanager_config_passes_amtool():
    amtool = tool("amtool", "prometheus-alertmanager")
    proc = run(amtool, "check-config", ALERTMANAGER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b2 receivers\b", proc.stdout)


def test_alertmanager_has_webhook_and_mail_receivers_with_secrets_from_files():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    oncall = receivers[config["route"]["receiver"]]
    assert oncall["webhook_configs"] and oncall["email_configs"]
    token = oncall["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
    password = config["global"]["smtp_auth_password_file"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounted = {f"/run/secrets/{s}" for s in compose["services"]["alertmanager"]["secrets"]}
    assert {token, password} <= mounted
    # and no password or token is written into the config itself
    assert "smtp_auth_password" not in config["global"]


def test_rule_tests_catch_a_reload_alert_that_ignores_a_failure_result(tmp_path):
    """Against a rule that counts only not_found as a failure, the unit tests catch the missed
    sha256_mismatch."""
    promtool = tool("promtool", "prometheus")
    text = ALERTS.read_text()
    selector = 'result!~"switched|unchanged"'
    assert text.count(selector) == 1
    (tmp_path / "alerts.yml").write_text(text.replace(selector, 'result="not_found"'))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    proc = run(promtool, "test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert proc.returncode != 0
    assert "XscreenModelReloadFailed" in proc.stdout + proc.stderr


def test_a_real_audit_refusal_is_counted_where_the_alerts_look(tmp_path):
    """A real server whose audit disk is full (/dev/full) refuses a scan with 503 audit_unavailable. Its
    /metrics samples, replayed into promtool as one such refusal a minute, fire both the audit alert and
    the error-ratio alert: the 503 is counted on the /detect route the ratio reads, and by errno."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.service_fixtures import InThreadServer, bundled_weights, easy_scans, post_scan

    promtool = tool("promtool", "prometheus")
    scan = easy_scans(1, 128)[0]
    families = ("xscreen_http_requests", "xscreen_audit_failures")
    with InThreadServer(weights=bundled_weights(), device="cpu", audit_path="/dev/full") as srv:
        before = requests.get(srv.url + "/metrics").text
        r = post_scan(srv.url, *scan.png(), key=None)
        assert r.status_code == 503 and r.json()["error"] == "audit_unavailable", r.text
        after = requests.get(srv.url + "/metrics").text

    def samples(text: str) -> dict[str, float]:
        out = {}
        for family in text_string_to_metric_families(text):
            if family.name in families:
                for sample in family.samples:
                    labels = {**sample.labels, "job": "xscreen", "instance": "detector:8000"}
                    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                    out[f"{sample.name}{{{body}}}"] = sample.value
        return out

    start, end = samples(before), samples(after)
    # what the refused scan moved (the first scrape itself counts as one GET /metrics)
    moved = {
        k: end[k] - start.get(k, 0.0) for k in end if end[k] != start.get(k, 0.0) and "/metrics" not in k
    }
    assert moved == {
        'xscreen_audit_failures_total{instance="detector:8000",job="xscreen",reason="ENOSPC"}': 1.0,
        'xscreen_http_requests_total{instance="detector:8000",job="xscreen",method="POST",route="/detect",'
        'status="503"}': 1.0,
    }
    series = [
        {"series": name, "values": f"{start.get(name, 0.0):g}+{end[name] - start.get(name, 0.0):g}x20"}
        for name in end
    ]
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "XscreenAuditWriteFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "instance": "detector:8000",
                                    "reason": "ENOSPC",
                                },
                                "exp_annotations": {
                                    "summary": rules["XscreenAuditWriteFailing"]["annotations"]["summary"],
                                    "description": rules["XscreenAuditWriteFailing"]["annotations"][
                                        "description"
                                    ]
                                    .replace("{{ $labels.instance }}", "detector:8000")
                                    .replace("{{ $labels.reason }}", "ENOSPC"),
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "XscreenErrorRatioHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {
                                    "summary": rules["XscreenErrorRatioHigh"]["annotations"]["summary"],
                                    "description": rules["XscreenErrorRatioHigh"]["annotations"][
                                        "description"
                                    ].replace("{{ $value | humanizePercentage }}", "100%"),
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "replay_test.yml"
    path.write_text(yaml.safe_dump(spec))
    proc = run(promtool, "test", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
