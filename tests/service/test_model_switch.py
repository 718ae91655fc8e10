"""Versioned models: switching under load drops no request, every failed switch keeps the old model,
SIGHUP re-reads the selection file (real ``xscreen serve`` process), start-up names a missing model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.service_fixtures import (
    API_KEY,
    InThreadServer,
    ServiceProcess,
    bundled_weights,
    easy_scans,
    metric_value,
    post_scan,
)
from tests.support.unreadable import make_unreadable

pytestmark = pytest.mark.timeout(300)
ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SCAN = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """v1 = the bundled weights; v2 = the same, one bias nudged (another sha256); and broken files."""
    import torch
    from safetensors.torch import load_file, save_file

    from xscreen.model import build_detector
    from xscreen.model.weights import load_weights, read_header, save_weights

    d = tmp_path_factory.mktemp("models")
    shutil.copy(bundled_weights(), d / "v1.safetensors")
    model, info = load_weights(d / "v1.safetensors")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("bias")).add_(1e-3)
    sha2 = save_weights(model, d / "v2.safetensors", metadata={"name": info.name, "version": "0.2.1-test"})
    raw = (d / "v2.safetensors").read_bytes()
    (d / "corrupt.safetensors").write_bytes(raw[: len(raw) // 2])
    torch.manual_seed(0)
    few = info.config.with_overrides(class_names=list(info.config.class_names[:5]))
    sha5 = save_weights(build_detector(few), d / "five-classes.safetensors")
    # a header promising another architecture than its tensors have
    header = read_header(d / "v2.safetensors")
    cfg = json.loads(header["config"])
    header["config"] = json.dumps({**cfg, "fpn_channels": cfg["fpn_channels"] * 2}, sort_keys=True)
    save_file(load_file(str(d / "v2.safetensors")), str(d / "mislabelled.safetensors"), metadata=header)
    return d, {"v1": info.sha256, "v2": sha2, "five": sha5}


def _model(url: str) -> dict:
    return requests.get(url + "/model", headers=SCAN, timeout=30).json()


def _switch(url: str, name: str, sha256: str, headers=ADMIN) -> requests.Response:
    return requests.post(
        url + "/admin/model", json={"name": name, "sha256": sha256}, headers=headers, timeout=120
    )


@pytest.mark.slow  # model switches under load
def test_switch_under_load_drops_no_request_and_failures_keep_the_old_model(models, tmp_path):
    d, sha = models
    selection = tmp_path / "selection.json"
    scan = easy_scans(1, 128)[0]
    raw = scan.raw()
    with InThreadServer(
        models_dir=d,
        model_name="v1",
        weights_sha256=sha["v1"],
        model_selection_file=selection,
        api_keys=API_KEY,
        admin_keys=ADMIN_KEY,
        device="cpu",
        max_batch_size=2,
    ) as srv:
        url = srv.url
        assert _model(url)["sha256"] == sha["v1"] and _model(url)["model_name"] == "v1"
        results: list[tuple[float, int, str | None]] = []  # (sent at, status, model sha256)
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                r = post_scan(url, *raw, width=128, height=128)
                body = r.json()
                results.append((sent, r.status_code, body.get("model", {}).get("sha256")))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        # answers before the switch, then the switch, then answers sent after it returned (waits, not
        # fixed sleeps: on a loaded machine one scan can take longer than a second)
        deadline = time.monotonic() + 120
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        switch_started = time.monotonic()
        r = _switch(url, "v2", sha["v2"])
        switched_at = time.monotonic()
        while sum(sent > switched_at for sent, _, _ in list(results)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["result"] == "switched" and body["previous_sha256"] == sha["v1"]
        assert body["model"]["sha256"] == sha["v2"] and body["model"]["version"] == "0.2.1-test"
        assert body["persisted"] is True
        assert json.loads(selection.read_text()) == {"name": "v2", "sha256": sha["v2"]}
        assert [s for _, s, _ in results if s != 200] == [], "a request failed during the switch"
        before = [m for sent, _, m in results if sent < switch_started]
        after = [m for sent, _, m in results if sent > switched_at]
        assert before and set(before) <= {sha["v1"], sha["v2"]} and sha["v1"] in before
        assert after and set(after) == {sha["v2"]}

        metrics = requests.get(url + "/metrics").text
        assert metric_value(metrics, "xscreen_model_info", sha256=sha["v2"]) == 1
        assert metric_value(metrics, "xscreen_model_info", sha256=sha["v1"]) == 0
        assert metric_value(metrics, "xscreen_model_reloads_total", result="switched") == 1
        assert _switch(url, "v2", sha["v2"]).json()["result"] == "unchanged"

        failures = [
            (
                "no-such-model",
                sha["v1"],
                404,
                "model_not_found",
                "available: corrupt, five-classes",
                "not_found",
            ),
            ("v1", sha["v2"], 422, "sha256_mismatch", "expected", "sha256_mismatch"),
            ("corrupt", sha["v2"], 422, "invalid_model", "corrupt", "invalid_model"),
            ("five-classes", sha["five"], 422, "invalid_model", "classes", "invalid_model"),
            ("mislabelled", sha["v2"], 422, "invalid_model", "do not fit", "invalid_model"),
        ]
        for name, pin, status, code, fragment, _ in failures:
            r = _switch(url, name, pin)
            assert (r.status_code, r.json()["error"]) == (status, code), (name, r.text)
            assert fragment in r.json()["detail"], (name, r.text)
            assert _model(url)["sha256"] == sha["v2"], name
            assert post_scan(url, *raw, width=128, height=128).json()["model"]["sha256"] == sha["v2"]
        metrics = requests.get(url + "/metrics").text
        for result, n in (("not_found", 1), ("sha256_mismatch", 1), ("invalid_model", 3)):
            assert metric_value(metrics, "xscreen_model_reloads_total", result=result) == n, result
        assert json.loads(selection.read_text())["name"] == "v2"

        # auth: scan keys cannot switch models; bad bodies are 422
        assert _switch(url, "v1", sha["v1"], headers=SCAN).status_code == 401
        assert _switch(url, "v1", sha["v1"], headers={}).status_code == 401
        bad = requests.post(url + "/admin/model", json={"name": "../x", "sha256": "z"}, headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"

        # a second switch while one is loading: 409, and the first one completes
        service = srv.server.config.app.state.service
        first: list[requests.Response] = []
        loader = threading.Thread(target=lambda: first.append(_switch(url, "v1", sha["v1"])))
        loader.start()
        end = time.monotonic() + 30
        while not service.models.busy and time.monotonic() < end:
            time.sleep(0.001)
        second = _switch(url, "v2", sha["v2"])
        loader.join(60)
        assert (second.status_code, second.json()["error"]) == (409, "model_switch_in_progress")
        assert first[0].status_code == 200 and _model(url)["sha256"] == sha["v1"]
        metrics = requests.get(url + "/metrics").text
        assert metric_value(metrics, "xscreen_model_reloads_total", result="busy") == 1


def test_admin_endpoint_is_off_without_admin_keys(models):
    d, sha = models
    with InThreadServer(models_dir=d, model_name="v1", device="cpu") as srv:
        r = _switch(srv.url, "v2", sha["v2"], headers={})
        assert (r.status_code, r.json()["error"]) == (403, "admin_disabled")
        assert _model(srv.url)["sha256"] == sha["v1"]


@pytest.mark.slow  # a real server reloading its models
def test_sighup_rereads_the_selection_file(models, tmp_path):
    d, sha = models
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"name": "v1", "sha256": sha["v1"]}))
    srv = ServiceProcess(
        tmp_path / "serve.log",
        models_dir=d,
        model_name="v2",  # the selection file wins over XSCREEN_MODEL_NAME
        model_selection_file=selection,
        api_keys=API_KEY,
        device="cpu",
        request_timeout=5,  # misspelt on purpose: XSCREEN_REQUEST_TIMEOUT
    ).start()
    try:
        srv.wait_ready()
        assert _model(srv.url)["sha256"] == sha["v1"]
        assert "XSCREEN_REQUEST_TIMEOUT is not a setting" in srv.log()
        assert "did you mean XSCREEN_REQUEST_TIMEOUT_S?" in srv.log()

        def after_hup(content: dict, until) -> None:
            selection.write_text(json.dumps(content))
            srv.proc.send_signal(signal.SIGHUP)
            end = time.monotonic() + 60
            while time.monotonic() < end and not until():
                time.sleep(0.1)
            assert until(), srv.log()[-3000:]

        after_hup({"name": "v2", "sha256": sha["v2"]}, lambda: _model(srv.url)["sha256"] == sha["v2"])

        def reloads(result: str) -> float:
            text = requests.get(srv.url + "/metrics").text
            return metric_value(text, "xscreen_model_reloads_total", result=result)

        after_hup({"name": "v1", "sha256": sha["v2"]}, lambda: reloads("sha256_mismatch") == 1)
        after_hup({"name": "v1"}, lambda: reloads("selection_error") == 1)
        assert _model(srv.url)["sha256"] == sha["v2"] and srv.proc.poll() is None
        assert "model switch failed, the old model keeps serving" in srv.log()
    finally:
        assert srv.stop() == 0


def test_start_up_names_the_missing_model(models, tmp_path):
    from xscreen.service.settings import SettingsError, load_settings

    d, sha = models
    with pytest.raises(
        SettingsError, match=r"no model named 'v3' .*available: corrupt, five-classes, mislabelled, v1, v2"
    ):
        load_settings(models_dir=d, model_name="v3")
    with pytest.raises(SettingsError, match="XSCREEN_MODELS_DIR needs XSCREEN_MODEL_NAME"):
        load_settings(models_dir=d)
    bad = tmp_path / "sel.json"
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="cannot read model selection file"):
        load_settings(models_dir=d, model_name="v1", model_selection_file=bad)
    s = load_settings(models_dir=d, model_name="v2", weights_sha256=sha["v2"])
    assert s.weights == d / "v2.safetensors"


def test_an_unreadable_model_file_says_permission_denied_and_the_uid(models, tmp_path):
    """A model file the service's user may not read (copied in by root with mode 0600, say) stops the start
    and fails a switch with "permission denied" and the uid that needs read access, not "No such file"."""
    d, sha = models
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("v1", "locked"):
        shutil.copy(d / "v1.safetensors", folder / f"{name}.safetensors")
    prefix, whose = make_unreadable(folder / "locked.safetensors")
    said = f"permission denied: uid {os.geteuid()} needs read access to it (the file has {whose})"
    start = ServiceProcess(tmp_path / "start.log", prefix, models_dir=folder, model_name="locked")
    start.start().proc.wait(120)
    assert start.stop() == 2 and f"{folder / 'locked.safetensors'}: {said}" in start.log(), start.log()

    srv = ServiceProcess(
        tmp_path / "serve.log", prefix, models_dir=folder, model_name="v1", device="cpu", admin_keys=ADMIN_KEY
    )
    try:
        srv.start().wait_ready()
        answer = _switch(srv.url, "locked", sha["v1"])
        assert answer.status_code == 422, answer.text
        assert said in answer.json()["detail"] and _model(srv.url)["model_name"] == "v1"
    finally:
        assert srv.stop() == 0
