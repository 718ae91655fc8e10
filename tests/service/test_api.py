"""The HTTP API against a real ``xscreen serve`` process: detections, formats, bad inputs, auth, logs, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from tests.support.service_fixtures import (
    API_KEY,
    XSCREEN,
    ServiceProcess,
    matched,
    metric_value,
    post_scan,
)
from xscreen import client

pytestmark = pytest.mark.timeout(600)

MAX_PIXELS = 1_000_000
MAX_UPLOAD = 3_000_000


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    keys = tmp / "keys.txt"
    keys.write_text(f"# test keys\n{API_KEY}\nanother-key-abcdefghijkl\n")
    srv = ServiceProcess(
        tmp / "serve.log",
        weights=demo.weights,
        api_keys_file=keys,
        max_batch_size=4,
        queue_size=32,
        max_pixels=MAX_PIXELS,
        max_upload_bytes=MAX_UPLOAD,
        score_threshold=demo.score_threshold,
        device="cpu",
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def xs(server):
    """The Python client an integrator uses, for the requests that are plain scans."""
    with client.Client(server.url, api_key=API_KEY) as c:
        yield c


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_detects_the_objects_in_16bit_scans(xs, demo, fmt):
    hits = []
    for i, scan in enumerate(demo.scans):
        high, low = getattr(scan, fmt)()
        body = xs.detect(high, low, scan_id=f"scan-{fmt}-{i}")
        assert body.scan_id == f"scan-{fmt}-{i}"
        assert (body.image.width, body.image.height) == (scan.high.shape[1], scan.high.shape[0])
        assert body.model.sha256 and len(body.model.sha256) == 64
        assert body.model.backend == "torch" and body.model.device == "cpu"
        for stage in ("decode", "convert", "queue_wait", "backbone_fpn", "la_grad", "head_second", "total"):
            assert body.timings[stage] >= 0.0
        scores = [d.score for d in body.detections]
        assert scores == sorted(scores, reverse=True) and all(s >= demo.score_threshold for s in scores)
        assert body.alarm == bool(scores)  # every answered detection is at or above the threshold
        for d in body.detections:
            b = d.box
            assert 0 <= b.x1 < b.x2 <= scan.high.shape[1] + 1 and 0 <= b.y1 < b.y2 <= scan.high.shape[0] + 1
            assert d.group in ("cutter", "liquid container")
        found = matched([d.model_dump() for d in body.detections], scan)
        assert any(found), f"no object of {scan.names} found in scan {i}: {body.detections}"
        hits += found
    assert sum(hits) >= 0.5 * len(hits), f"found {sum(hits)} of {len(hits)} objects"


def test_npy_and_raw_buffers_give_the_png_answer(xs, demo):
    scan = demo.scans[0]
    ref = xs.detect(*scan.png(), score_threshold=0.05).detections
    height, width = scan.high.shape
    for body in (
        xs.detect(*scan.npy(), score_threshold=0.05),
        xs.detect(*scan.raw(), width=width, height=height, score_threshold=0.05),
    ):
        got = body.detections
        assert [d.class_name for d in got] == [d.class_name for d in ref]
        for a, b in zip(got, ref, strict=True):
            assert abs(a.score - b.score) < 1e-3
            assert all(abs(getattr(a.box, k) - getattr(b.box, k)) < 0.1 for k in ("x1", "y1", "x2", "y2"))


def test_score_threshold_filters(xs, demo):
    scan = demo.scans[0]
    low_t = xs.detect(*scan.png(), score_threshold=0.05)
    assert low_t.score_threshold == 0.05
    high_t = xs.detect(*scan.png(), score_threshold=0.99)
    assert all(d.score >= 0.99 for d in high_t.detections)
    assert len(high_t.detections) <= len(low_t.detections)
    assert len(low_t.detections) > 0


def test_render_returns_the_picture(server, demo):
    scan = demo.scans[0]
    r = post_scan(server.url, *scan.png(), path="/render", scan_id="render-1")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-scan-id"] == "render-1"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (*scan.high.shape, 3)
    from xscreen.scans.picture import pseudo_colour

    plain = cv2.cvtColor(pseudo_colour(scan.high, scan.low), cv2.COLOR_RGB2BGR)
    assert np.abs(img.astype(int) - plain.astype(int)).max() > 50  # boxes and labels were drawn


# ------------------------------------------------------------------------------------------- bad input
def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _bad_cases(scan):
    hi, lo = scan.png()
    h, w = scan.high.shape
    big = np.full((1001, 1000), 30000, np.uint16)  # 1,001,000 px > MAX_PIXELS
    return {
        "missing part": (dict(files={"high": hi}), 422, "invalid_request", "low"),
        "sizes differ": (
            dict(files={"high": hi, "low": _png(scan.low[:-8])}),
            400,
            "scan_size_mismatch",
            "mismatch",
        ),
        "8-bit png": (
            dict(files={"high": _png((scan.high >> 8).astype(np.uint8)), "low": lo}),
            400,
            "invalid_scan",
            "8-bit",
        ),
        "colour png": (
            dict(files={"high": _png(np.dstack([scan.high] * 3)), "low": lo}),
            400,
            "invalid_scan",
            "colour",
        ),
        "truncated png": (
            dict(files={"high": hi[: len(hi) // 2], "low": lo}),
            400,
            "invalid_scan",
            "truncated",
        ),
        "corrupt png": (
            dict(files={"high": hi[:60] + bytes(200) + hi[-12:], "low": lo}),
            400,
            "invalid_scan",
            "corrupt",
        ),
        "truncated tiff": (
            dict(files={"high": scan.tiff()[0][:300], "low": lo}),
            400,
            "invalid_scan",
            "TIFF",
        ),
        "unknown format": (
            dict(files={"high": b"hello, this is not an image", "low": lo}),
            415,
            "unsupported_format",
            "unknown file format",
        ),
        "jpeg": (
            dict(
                files={
                    "high": cv2.imencode(".jpg", (scan.high >> 8).astype(np.uint8))[1].tobytes(),
                    "low": lo,
                }
            ),
            415,
            "unsupported_format",
            "JPEG",
        ),
        "empty part": (dict(files={"high": b"", "low": lo}), 400, "invalid_scan", "empty"),
        "float npy": (
            dict(files={"high": _npy(scan.high.astype(np.float32)), "low": lo}),
            400,
            "invalid_scan",
            "uint16",
        ),
        "1x1 image": (
            dict(files={"high": _png(np.zeros((1, 1), np.uint16)), "low": _png(np.zeros((1, 1), np.uint16))}),
            400,
            "invalid_scan",
            "at least",
        ),
        "too many pixels": (
            dict(files={"high": _png(big), "low": _png(big)}),
            413,
            "too_many_pixels",
            "limit",
        ),
        "raw wrong length": (
            dict(files={"high": b"\0" * 10, "low": b"\0" * 10}, data={"width": w, "height": h}),
            400,
            "invalid_scan",
            "bytes",
        ),
        "raw too many pixels": (
            dict(files={"high": b"\0" * 8, "low": b"\0" * 8}, data={"width": 2000, "height": 2000}),
            413,
            "too_many_pixels",
            "limit",
        ),
        "width without height": (
            dict(files={"high": hi, "low": lo}, data={"width": w}),
            400,
            "invalid_parameter",
            "height",
        ),
        "width 1": (
            dict(files={"high": hi, "low": lo}, data={"width": 1, "height": h}),
            422,
            "invalid_request",
            "width",
        ),
        "width not a number": (
            dict(files={"high": hi, "low": lo}, data={"width": "wide", "height": h}),
            422,
            "invalid_request",
            "width",
        ),
        "threshold above 1": (
            dict(files={"high": hi, "low": lo}, data={"score_threshold": "2"}),
            422,
            "invalid_request",
            "score_threshold",
        ),
        "threshold nan": (
            dict(files={"high": hi, "low": lo}, data={"score_threshold": "nan"}),
            422,
            "invalid_request",
            "score_threshold",
        ),
        "bad scan id": (
            dict(files={"high": hi, "low": lo}, data={"scan_id": "a b\n<script>"}),
            422,
            "invalid_request",
            "scan_id",
        ),
        "part sent as text field": (
            dict(files={"low": lo}, data={"high": "abc"}),
            422,
            "invalid_request",
            "high",
        ),
    }


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_every_bad_input_is_a_4xx_with_error_and_detail(server, demo):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    failures = []
    for name, (kwargs, status, code, fragment) in _bad_cases(demo.scans[0]).items():
        files = {k: (f"{k}.bin", v, "application/octet-stream") for k, v in kwargs["files"].items()}
        r = requests.post(
            server.url + "/detect", files=files, data=kwargs.get("data"), headers=headers, timeout=60
        )
        body = r.json()
        if (r.status_code, body.get("error")) != (status, code) or fragment.lower() not in body.get(
            "detail", ""
        ).lower():
            failures.append(f"{name}: {r.status_code} {body}")
        assert set(body) == {"error", "detail"}, name
    assert not failures, "\n".join(failures)
    # ... and the service keeps serving
    assert post_scan(server.url, *demo.scans[0].png()).status_code == 200


def test_protocol_level_bad_requests(server, demo):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = server.url + "/detect"
    cases = [
        (requests.post(url, json={"high": "x"}, headers=headers), 415, "unsupported_media_type"),
        (requests.post(url, data=b"abc", headers=headers), 415, "unsupported_media_type"),
        (
            requests.post(
                url, data=b"", headers={**headers, "Content-Type": "multipart/form-data; boundary=x"}
            ),
            400,
            "empty_body",
        ),
        (
            requests.post(
                url,
                data=b"--x\r\ngarbage",
                headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
            ),
            422,  # unparseable multipart holds no parts: the parts are missing
            "invalid_request",
        ),
        # declared too big: refused from the header, before the body is read
        (
            requests.post(
                url,
                data=b"0" * (MAX_UPLOAD + 1),
                headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
            ),
            413,
            "payload_too_large",
        ),
        # chunked (no Content-Length): refused while streaming, once the limit is passed
        (
            requests.post(
                url,
                data=(b"0" * 65536 for _ in range(MAX_UPLOAD // 65536 + 2)),
                headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
            ),
            413,
            "payload_too_large",
        ),
        (requests.get(url, headers=headers), 405, "method_not_allowed"),
        (requests.get(server.url + "/no-such-page"), 404, "not_found"),
    ]
    for r, status, code in cases:
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
        assert r.json()["detail"]
    assert requests.get(server.url + "/healthz").json() == {"status": "ok"}


# ------------------------------------------------------------------------------------------------ auth
def test_api_keys(server, demo):
    hi, lo = demo.scans[0].png()
    none = post_scan(server.url, hi, lo, key=None)
    assert none.status_code == 401 and none.json()["error"] == "unauthorized"
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert post_scan(server.url, hi, lo, key="wrong-key-0123456789abc").status_code == 401
    basic = requests.post(
        server.url + "/detect", files={"high": hi, "low": lo}, headers={"Authorization": "Basic eDp5"}
    )
    assert basic.status_code == 401
    assert post_scan(server.url, hi, lo, key="another-key-abcdefghijkl").status_code == 200
    assert post_scan(server.url, hi, lo, key=API_KEY, path="/render").status_code == 200
    assert post_scan(server.url, hi, lo, key=None, path="/render").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):  # open (XSCREEN_PROTECT_METRICS is false here)
        assert requests.get(server.url + path).status_code == 200


def test_logs_are_json_lines_with_scan_id_and_never_the_key(server, demo):
    post_scan(server.url, *demo.scans[0].png(), scan_id="log-check-1")
    # the request line is written once the response has gone out: on a loaded machine, a moment later
    deadline, req = time.monotonic() + 10.0, []
    while not req and time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        req = [e for e in lines if e.get("scan_id") == "log-check-1"]
        time.sleep(0.05)
    assert len(req) == 1 and req[0]["status"] == 200 and req[0]["route"] == "/detect"
    assert req[0]["timings"]["total"] > 0
    assert API_KEY not in server.log() and "another-key-abcdefghijkl" not in server.log()


def test_metrics_count_requests_and_detections(server, demo):
    before = requests.get(server.url + "/metrics").text
    r = post_scan(server.url, *demo.scans[0].png(), score_threshold=0.05)
    post_scan(server.url, b"junk", b"junk")
    after = requests.get(server.url + "/metrics").text

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("xscreen_http_requests_total", route="/detect", status="200") == 1
    assert delta("xscreen_http_requests_total", route="/detect", status="415") == 1
    assert delta("xscreen_http_request_duration_seconds_count", route="/detect", method="POST") == 2
    assert delta("xscreen_detections_total") == len(r.json()["detections"])
    assert delta("xscreen_inference_stage_seconds_count", stage="la_grad") == 1
    assert metric_value(after, "xscreen_model_info", sha256=r.json()["model"]["sha256"]) == 1
    assert metric_value(after, "xscreen_ready") == 1


# ------------------------------------------------------------------------------------------------- CLI
def test_detect_cli_json_and_render(demo, tmp_path, capsys):
    scan = demo.scans[0]
    hi, lo = tmp_path / "h.tiff", tmp_path / "l.tiff"
    hi.write_bytes(scan.tiff()[0])
    lo.write_bytes(scan.tiff()[1])
    out = tmp_path / "out.png"
    args = [
        XSCREEN,
        "detect",
        "--high",
        str(hi),
        "--low",
        str(lo),
        "--weights",
        str(demo.weights),
        "--device",
        "cpu",
        "--score-threshold",
        str(demo.score_threshold),
    ]
    proc = subprocess.run(
        [*args, "--json", "--render", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["image"] == {"width": scan.high.shape[1], "height": scan.high.shape[0]}
    assert any(matched(body["detections"], scan))
    img = cv2.imread(str(out))
    assert img is not None and img.shape == (*scan.high.shape, 3)
    # bad input: one line, exit 2 (through the same CLI entry point, in this process)
    from xscreen.cli import main

    code = main(
        ["detect", "--high", str(tmp_path / "missing.png"), "--low", str(lo), "--weights", str(demo.weights)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == f"xscreen detect: error: --high {tmp_path / 'missing.png'}: no such file"
    lo.write_bytes(scan.tiff()[1][:500])
    assert main(["detect", "--high", str(hi), "--low", str(lo), "--weights", str(demo.weights)]) == 2
    assert "truncated or corrupt TIFF" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- deploy vs live
def test_dashboard_and_alerts_query_metrics_the_live_service_exports(server):
    from prometheus_client.parser import text_string_to_metric_families

    exported = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
    for family in text_string_to_metric_families(requests.get(server.url + "/metrics").text):
        exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    repo = Path(__file__).resolve().parents[2]
    dashboard = json.loads((repo / "deploy/grafana/dashboards/xscreen.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    import yaml

    alerts = yaml.safe_load((repo / "deploy/prometheus/alerts.yml").read_text())
    queries += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {name for q in queries for name in re.findall(r"\b(xscreen_[a-z0-9_]+)\b", q)}
    assert len(used) >= 10
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"
    # the labels the panels group by exist on the live series
    text = requests.get(server.url + "/metrics").text
    assert 'route="/detect"' in text and 'stage="la_grad"' in text


def test_upload_parts_over_a_megabyte_stay_in_memory(monkeypatch):
    """The upload guard already holds the whole body in memory, so the app keeps parts over Starlette's
    1 MB spooling default in memory too instead of writing them to temporary files."""
    import asyncio

    from starlette.formparsers import MultiPartParser
    from starlette.requests import Request
    from urllib3 import encode_multipart_formdata

    from xscreen.service.app import create_app
    from xscreen.service.settings import load_settings

    monkeypatch.setattr(MultiPartParser, "spool_max_size", 1024 * 1024)  # Starlette's default
    part = bytes(range(256)) * 12_000  # 3 MB: a 1224 x 1224 raw uint16 image
    body, ctype = encode_multipart_formdata({"high": ("high.raw", part)})

    async def parse() -> tuple[bool, bytes]:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        scope = {"type": "http", "method": "POST", "path": "/detect", "query_string": b""}
        scope["headers"] = [(b"content-type", ctype.encode())]
        form = await Request(scope, receive).form()
        upload = form["high"]
        return upload._in_memory, await upload.read()

    assert asyncio.run(parse())[0] is False  # without the app's setting: spilled to a temporary file
    create_app(load_settings(max_upload_bytes=8_000_000, device="cpu"))
    in_memory, data = asyncio.run(parse())
    assert in_memory is True and data == part
