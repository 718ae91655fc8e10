"""benchmarks/png_decode.py: its IDAT extraction is the PNG's real image stream, and it prints its table."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
from png_decode import idat

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_idat_inflates_to_the_filtered_rows():
    img = np.random.default_rng(0).integers(0, 65536, size=(37, 53), dtype=np.uint16)
    rows = zlib.decompress(idat(cv2.imencode(".png", img)[1].tobytes()))
    assert len(rows) == 37 * (1 + 53 * 2)  # a filter-type byte, then 2 bytes per pixel, per row


def test_script_prints_a_row_per_size():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "png_decode.py"), "--sizes", "64,96", "--runs", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [
        line.split("|")[1:-1]
        for line in proc.stdout.splitlines()
        if line.startswith("| 64x64") or line.startswith("| 96x96")
    ]
    assert [r[0].strip() for r in rows] == ["64x64", "96x96"]
    assert [int(r[1]) for r in rows] == [64 * 64 * 2, 96 * 96 * 2]
    for r in rows:  # read_scan, cv2, zlib timings; then Wuffs and libdeflate ("-" where not installed)
        assert len(r) == 9 and all(float(v) > 0 for v in r[4:7])
        assert all(v.strip() == "-" or float(v) > 0 for v in r[7:])
    bad = subprocess.run(
        [sys.executable, str(BENCH / "png_decode.py"), "--sizes", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "argument --sizes: expected a whole number, got 'x'" in bad.stderr
