"""benchmarks/valid_scans.py on a small ``xscreen synth --format dicos`` split: every valid pair is accepted
in every transfer syntax; a split with exchanged pairs is reported (exit 1); no data is a usage error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
XSCREEN = str(Path(sys.executable).with_name("xscreen"))

pytestmark = pytest.mark.timeout(300)


def _bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "valid_scans.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("valid") / "data"
    synth = [XSCREEN, "synth", "--out", str(out), "--images", "6", "--size", "160x128", "--seed", "3"]
    synth += ["--splits", "0,0,1", "--format", "dicos", "--no-progress"]
    subprocess.run(synth, check=True, capture_output=True, timeout=240)
    return out


def test_every_valid_pair_is_accepted_in_every_syntax(split):
    proc = _bench("--data", str(split), "--reencode", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| (\d+) \| (.+) \|$", proc.stdout, flags=re.M)
    kinds = [k for k, *_ in rows]
    assert kinds[:2] == ["16-bit PNG", "DICOS DX as written"] and len(kinds) == 2 + 7, proc.stdout
    for kind, pairs, accepted, why in rows:
        assert pairs == accepted and why == "-", kind
        assert int(pairs) == (6 if kind in ("16-bit PNG", "DICOS DX as written") else 2)


def test_exchanged_pairs_are_counted_and_fail_the_run(split, tmp_path):
    swapped = tmp_path / "swapped"
    (swapped / "raw" / "test").mkdir(parents=True)
    for high in sorted((split / "raw" / "test").glob("*_high.png"))[:3]:
        low = high.with_name(high.name.replace("_high", "_low"))
        (swapped / "raw" / "test" / high.name).write_bytes(low.read_bytes())
        (swapped / "raw" / "test" / low.name).write_bytes(high.read_bytes())
    proc = _bench("--data", str(swapped))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "| 16-bit PNG | 3 | 0 | energies_swapped 3 |" in proc.stdout


def test_no_data_is_a_usage_error(tmp_path):
    proc = _bench("--data", str(tmp_path))
    assert proc.returncode == 2 and "run xscreen synth first" in proc.stderr
