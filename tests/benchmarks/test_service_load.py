"""benchmarks/service_load.py end to end at a tiny size: it starts a real server, fills its tables for
two upload formats and splits the time. Only the shape and consistency of the output are checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "service_load.py"

pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow  # a server and the load benchmark
def test_service_load_prints_its_tables_ratio_and_breakdown():
    args = ["--requests", "4", "--model-runs", "2", "--concurrency", "1,2", "--size", "128", "--scans", "2"]
    args += ["--formats", "png,raw"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = re.findall(r"^\| (png|raw) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", out, flags=re.M)
    assert rows == [(f, c, "4", "4", "0") for f in ("png", "raw") for c in ("1", "2")], out
    ratios = re.findall(
        r"^\| (png|raw) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (meets|misses) \|(.*)$",
        out,
        flags=re.M,
    )
    assert [r[0] for r in ratios] == ["png", "raw"], out
    for _, mb, e2e, model, ratio, verdict, rest in ratios:
        assert 0 < float(model) < float(e2e) and float(ratio) == pytest.approx(
            float(e2e) / float(model), abs=2e-3
        )
        assert verdict == ("meets" if float(ratio) <= 1.10 else "misses")
        # a 128 x 128 scan: two 32 KiB uint16 images (0.066 MB with the multipart framing), less as PNG
        assert 0.01 < float(mb) <= 0.07
        in_process, decode, convert, handler_rest, server_outside, client = (
            float(x) for x in rest.strip(" |").split(" | ")
        )
        assert 1.0 < in_process <= float(ratio)  # in-process = the model plus decode and convert
        assert 0 < decode < 500 and 0 < convert < 500 and 0 <= handler_rest < 500
        assert 0 < server_outside < 500
        # client + transport is a difference of two means (end to end less the server's histogram mean):
        # on loopback the client's share is a fraction of a millisecond, so noise can take it below zero
        assert -1.0 < client < 500


def test_service_load_refuses_missing_weights(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--weights", str(tmp_path / "none.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "weights file not found" in proc.stderr


@pytest.mark.parametrize("formats", ["png,gif", ","])
def test_service_load_refuses_unknown_formats(formats):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--formats", formats], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "argument --formats: expected a comma list of png, tiff, npy, raw" in proc.stderr
