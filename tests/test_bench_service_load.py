"""benchmarks/service_load.py end to end at a tiny size: it starts a real server, fills its table and
splits the time outside the handler. Only the shape and consistency of the output are checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "service_load.py"

pytestmark = pytest.mark.timeout(300)


def test_service_load_prints_its_table_ratio_and_breakdown():
    args = ["--requests", "4", "--model-runs", "2", "--concurrency", "1,2", "--size", "128", "--scans", "2"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", out, flags=re.M)
    assert [(c, n, ok, other) for c, n, ok, other in rows] == [("1", "4", "4", "0"), ("2", "4", "4", "0")]
    ratio = re.search(r"end-to-end p50 at concurrency 1 / model latency = ([\d.]+) \((meets|misses)", out)
    assert ratio and float(ratio.group(1)) > 0.5
    assert ratio.group(2) == ("meets" if float(ratio.group(1)) <= 1.10 else "misses")
    split = re.search(r"multipart parse, response\) ([-\d.]+); client and HTTP transport ([-\d.]+)", out)
    assert split, out
    server_extra, client = float(split.group(1)), float(split.group(2))
    assert 0 < server_extra < 0.5 and 0 < client < 0.5


def test_service_load_refuses_missing_weights(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--weights", str(tmp_path / "none.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "weights file not found" in proc.stderr
