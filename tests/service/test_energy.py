"""Exchanged high/low parts are refused on every input path (docs/method.md §1a): HTTP formats, DICOS, CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.service_fixtures import API_KEY, XSCREEN, ServiceProcess, post_scan
from xscreen.scans.dicos.dx import write_dx_pair
from xscreen.scans.dicos.files import EXPLICIT_LE, JPEG_LS_LOSSLESS, RLE_LOSSLESS

pytestmark = pytest.mark.timeout(600)
FORMATS = ["png", "tiff", "npy", "raw"]


def _server(tmp: Path, demo, **extra) -> ServiceProcess:
    return ServiceProcess(
        tmp / "serve.log",
        weights=demo.weights,
        api_keys=API_KEY,
        score_threshold=demo.score_threshold,
        device="cpu",
        warmup="false",
        **extra,
    ).start()


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    srv = _server(tmp_path_factory.mktemp("energy"), demo)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def _parts(scan, fmt: str, swapped: bool) -> tuple[bytes, bytes, dict]:
    high, low = getattr(scan, fmt)()
    fields = {"width": scan.high.shape[1], "height": scan.high.shape[0]} if fmt == "raw" else {}
    return (low, high, fields) if swapped else (high, low, fields)


@pytest.mark.parametrize("fmt", FORMATS)
def test_swapped_parts_are_400_and_the_right_order_is_200(server, demo, fmt):
    scan = demo.scans[0]
    high, low, fields = _parts(scan, fmt, swapped=True)
    r = post_scan(server.url, high, low, **fields)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "energies_swapped"
    assert "'high' and 'low' look exchanged" in body["detail"]
    assert "XSCREEN_CHECK_ENERGY_ORDER=false" in body["detail"]
    high, low, fields = _parts(scan, fmt, swapped=False)
    r = post_scan(server.url, high, low, **fields)
    assert r.status_code == 200, r.text
    assert r.json()["detections"], "the correct order still detects"


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, JPEG_LS_LOSSLESS, RLE_LOSSLESS])
def test_dicos_pixels_that_contradict_image_type_are_400(server, demo, syntax):
    scan = demo.scans[1]
    # Image Type says HIGH ENERGY on the file that holds the low-energy pixels
    wrong = write_dx_pair(scan.low, scan.high, transfer_syntax=syntax)
    r = post_scan(server.url, *wrong)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "energies_swapped"
    assert "Image Type (0008,0008) labels HIGH and LOW" in r.json()["detail"]
    right = write_dx_pair(scan.high, scan.low, transfer_syntax=syntax)
    # the parts' order does not matter for DICOS: Image Type orders them
    assert post_scan(server.url, right[1], right[0]).status_code == 200


def test_the_check_can_be_turned_off(demo, tmp_path):
    srv = _server(tmp_path, demo, check_energy_order="false")
    try:
        srv.wait_ready()
        high, low, _ = _parts(demo.scans[0], "png", swapped=True)
        assert post_scan(srv.url, high, low).status_code == 200
    finally:
        srv.stop()


@pytest.mark.slow  # xscreen detect processes
def test_cli_detect_refuses_swapped_files_unless_told(demo, tmp_path):
    high, low, _ = _parts(demo.scans[0], "png", swapped=False)
    (tmp_path / "h.png").write_bytes(high)
    (tmp_path / "l.png").write_bytes(low)
    base = [XSCREEN, "detect", "--weights", str(demo.weights), "--device", "cpu"]
    swapped = base + ["--high", str(tmp_path / "l.png"), "--low", str(tmp_path / "h.png")]
    r = subprocess.run(swapped, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "look exchanged" in lines[0] and "--no-energy-check" in lines[0]
    r = subprocess.run(swapped + ["--no-energy-check", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
