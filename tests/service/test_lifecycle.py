"""Start-up refusals (open host without keys, bad weights), 504, protected /metrics, graceful stop."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
import requests

from tests.support.service_fixtures import (
    API_KEY,
    XSCREEN,
    InThreadServer,
    ServiceProcess,
    bundled_weights,
    metric_value,
    post_scan,
)
from xscreen.cli import main

pytestmark = pytest.mark.timeout(600)


def _serve(capsys, monkeypatch, env: dict[str, str], *args: str) -> tuple[int, str]:
    """``xscreen serve`` through the real CLI entry point, in this process (start-up fails before binding)."""
    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(["serve", *args])
    return code, capsys.readouterr().err


def _one_clear_line(result: tuple[int, str], fragment: str) -> None:
    code, err = result
    assert code == 2, err
    assert "Traceback" not in err
    # the service's own JSON log records (e.g. the weights' info line) may come first; the error is one line
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith('{"ts":')]
    assert len(lines) == 1, err
    assert lines[0].startswith("xscreen serve: error:") and fragment in lines[0], lines[0]


def test_refuses_exposed_host_without_keys(capsys, monkeypatch):
    serve = functools.partial(_serve, capsys, monkeypatch)
    _one_clear_line(serve({"XSCREEN_HOST": "0.0.0.0"}), "refusing to listen on non-loopback host '0.0.0.0'")
    _one_clear_line(serve({}, "--host", "0.0.0.0", "--port", "0"), "XSCREEN_PORT")


def test_refusal_from_a_real_process():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    proc = subprocess.run(
        [XSCREEN, "serve"],
        env={**clean, "XSCREEN_HOST": "192.168.7.7"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_clear_line((proc.returncode, proc.stderr), "without an API key")


def test_bad_weights_stop_start_up_with_one_line(demo, tmp_path, capsys, monkeypatch):
    serve = functools.partial(_serve, capsys, monkeypatch)
    _one_clear_line(serve({"XSCREEN_WEIGHTS": str(tmp_path / "none.safetensors")}), "weights file not found")
    _one_clear_line(
        serve({"XSCREEN_WEIGHTS": str(demo.weights), "XSCREEN_WEIGHTS_SHA256": "0" * 64}), "sha256 mismatch"
    )
    # a file whose tensors no longer match the sha256 recorded in its header
    bad = tmp_path / "tampered.safetensors"
    shutil.copy(demo.weights, bad)
    data = bytearray(bad.read_bytes())
    for i in range(len(data) - 4096, len(data) - 4000):
        data[i] ^= 0x55
    bad.write_bytes(bytes(data))
    _one_clear_line(serve({"XSCREEN_WEIGHTS": str(bad)}), "sha256 mismatch")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights at all")
    _one_clear_line(serve({"XSCREEN_WEIGHTS": str(tmp_path / "junk.safetensors")}), "junk.safetensors")


def test_deadline_is_answered_504(demo):
    # A 2000x2000 scan takes far longer than 50 ms to decode and convert, so its deadline has passed
    # before it reaches the model: answered 504, and the worker skips it.
    rng = np.random.default_rng(0)
    high = rng.integers(20000, 60000, (2000, 2000), dtype=np.uint16)
    low = (high * 0.9).astype(np.uint16)
    big = cv2.imencode(".png", high)[1].tobytes(), cv2.imencode(".png", low)[1].tobytes()
    with InThreadServer(weights=demo.weights, request_timeout_s=0.05, warmup=False) as srv:
        r = post_scan(srv.url, *big, key=None)
        assert r.status_code == 504 and r.json()["error"] == "timeout", r.text
        assert requests.get(srv.url + "/healthz").status_code == 200
        metrics = requests.get(srv.url + "/metrics").text
        assert metric_value(metrics, "xscreen_rejected_requests_total", reason="deadline") == 1
        assert metric_value(metrics, "xscreen_batch_size_count") == 0  # never ran


@pytest.mark.slow  # a server stopped under load
def test_protected_metrics_and_graceful_shutdown(demo, tmp_path):
    # no XSCREEN_WEIGHTS: the service runs on the bundled demo weights (model/weights/)
    bundled = bundled_weights()
    srv = ServiceProcess(
        tmp_path / "serve.log",
        **({} if bundled.is_file() else {"weights": demo.weights}),
        api_keys=API_KEY,
        protect_metrics="true",
        graceful_timeout_s=30,
    ).start()
    try:
        srv.wait_ready()
        r = requests.get(srv.url + "/metrics")  # refused by the request guard, as /detect would be
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        missing = "missing API key: send 'Authorization: Bearer <key>'"
        assert r.json() == {"error": "unauthorized", "detail": missing}
        assert (
            requests.get(
                srv.url + "/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"}
            ).status_code
            == 401
        )
        assert (
            requests.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code
            == 200
        )
        assert requests.get(srv.url + "/healthz").status_code == 200

        # A scan whose upload takes ~2 s (the client pauses half-way through the body); SIGTERM arrives
        # meanwhile, so the request is in flight in the server when the stop begins.
        from urllib3 import encode_multipart_formdata

        hi, lo = demo.scans[0].png()
        body, ctype = encode_multipart_formdata(
            {"high": ("h.png", hi), "low": ("l.png", lo), "scan_id": "in-flight-1"}
        )

        def slow_body():
            yield body[: len(body) // 2]
            time.sleep(2.0)
            yield body[len(body) // 2 :]

        answer: dict = {}

        def in_flight():
            r = requests.post(
                srv.url + "/detect",
                data=slow_body(),
                headers={"Content-Type": ctype, "Authorization": f"Bearer {API_KEY}"},
                timeout=60,
            )
            answer.update(status=r.status_code, body=r.json(), at=time.monotonic())

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.7)
        srv.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        time.sleep(0.5)
        refused = False
        try:
            requests.get(srv.url + "/healthz", timeout=2)
        except requests.ConnectionError:
            refused = True
        t.join(60)
        assert refused, "a new connection was accepted after SIGTERM"
        assert answer.get("status") == 200 and answer["body"]["scan_id"] == "in-flight-1", answer
        assert answer["at"] > t_term + 0.5  # it really was in flight when the stop began
        if bundled.is_file():
            from xscreen.model.weights import read_header

            assert answer["body"]["model"]["sha256"] == read_header(bundled)["sha256"]
        srv.proc.wait(30)
        assert srv.proc.returncode == 0
        assert '"msg":"stopped"' in srv.log() and "stopped by SIGTERM" in srv.log()
    finally:
        srv.stop()


def test_formats_setting_limits_accepted_encodings(demo):
    scan = demo.scans[0]
    with InThreadServer(weights=demo.weights, formats="png,npy", warmup=False) as srv:
        assert post_scan(srv.url, *scan.png(), key=None).status_code == 200
        assert post_scan(srv.url, *scan.npy(), key=None).status_code == 200
        tiff = post_scan(srv.url, *scan.tiff(), key=None)
        assert tiff.status_code == 415 and tiff.json()["error"] == "unsupported_format"
        assert "tiff files are not accepted" in tiff.json()["detail"]
        raw = post_scan(srv.url, *scan.raw(), key=None, width=scan.high.shape[1], height=scan.high.shape[0])
        assert raw.status_code == 415 and "raw uint16 buffers are not accepted" in raw.json()["detail"]
