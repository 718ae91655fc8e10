"""benchmarks/scan_memory.py and benchmarks/hostile_load.py end to end at toy sizes: each starts a real
server and prints its table; the rows' shape and the numbers' consistency are checked, and a bad flag is
a usage error (exit 2)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# slow: the hostile-load and scan-memory benchmarks end to end
pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def _run(script: str, *args: str, timeout: float = 380) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout
    )


def test_scan_memory_prints_one_row_per_size():
    proc = _run("scan_memory.py", "--sizes", "256,1024", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(
        r"^\| (\d+)x(\d+) \| ([\d.]+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", proc.stdout, flags=re.M
    )
    assert [(w, h) for w, h, *_ in rows] == [("256", "256"), ("1024", "1024")], proc.stdout
    for w, h, mp, detect_mb, render_mb, detect_per, render_per in rows:
        assert float(mp) == pytest.approx(int(w) * int(h) / 1e6, abs=0.01)
        assert 0 <= int(detect_mb) < 2000 and 0 <= int(render_mb) < 2000
        exact_mp = int(w) * int(h) / 1e6
        for per, mb in ((detect_per, detect_mb), (render_per, render_mb)):  # MB are printed rounded
            assert float(per) * exact_mp == pytest.approx(int(mb), abs=0.6 + 0.01 * int(mb))


def test_hostile_load_prints_alone_and_beside_bombs():
    args = ["--bombs", "0,1", "--requests", "4", "--deadline", "5", "--bomb-mib", "64", "--size", "128"]
    proc = _run("hostile_load.py", *args, "--time-limit", "60", "--control")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)"
        r" \| (\d+) \| (\d+) \| (\S+) \|$",
        proc.stdout,
        flags=re.M,
    )
    assert [r[0] for r in rows] == ["0", "1"], proc.stdout
    alone, beside = rows
    assert alone[1:3] == ("4", "4") and beside[1:3] == ("4", "4")  # every valid scan answered 200
    assert float(alone[5]) == pytest.approx(1.0) and alone[7] == "0" and alone[9] == "-"
    assert float(beside[5]) == pytest.approx(float(beside[3]) / float(alone[3]), rel=0.02, abs=0.01)
    assert int(beside[7]) >= 1  # the bomb sender was answered at least once
    assert float(beside[9]) < 5 + 3  # within its deadline and some slack, whatever the decoder does
    control = re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|$",
        proc.stdout.split("control:")[1],
        flags=re.M,
    )
    assert [r[0] for r in control] == ["1"] and control[0][1:3] == ("4", "4"), proc.stdout
    assert int(control[0][7]) >= 1  # the valid-scan flood was answered too


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("scan_memory.py", ["--sizes", "32"], "argument --sizes"),
        ("scan_memory.py", ["--repeats", "0"], "argument --repeats"),
        ("hostile_load.py", ["--bombs", "two"], "argument --bombs"),
        ("hostile_load.py", ["--deadline", "-1"], "argument --deadline"),
    ],
)
def test_bad_flags_are_usage_errors(script, args, message):
    proc = _run(script, *args, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
