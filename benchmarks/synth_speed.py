"""Synthetic scanner speed on one core: per-stage milliseconds and images/s, printed as a markdown table.

    .venv/bin/python benchmarks/synth_speed.py [--images 30] [--size 640x640] [--workers 2]

Both wall-clock and CPU time (``time.process_time``) are reported: on a busy shared machine the
wall clock includes time spent waiting for a core, the CPU time is what one free core needs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np

from xscreen.argtypes import positive_int, size_pair
from xscreen.scans import convert_scan, quantise_converted
from xscreen.tables import markdown_table
from xscreen.training.synth import MIN_SIDE
from xscreen.training.synth.scene import make_scan
from xscreen.training.synth.writer import PNG_PARAMS, SynthConfig, write_dataset


class Clock:
    """Accumulates wall and CPU seconds per named stage."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] = self.wall.get(name, 0.0) + w - self._t[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + c - self._t[1]
        self._t = (w, c)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=positive_int, default=30)
    ap.add_argument("--size", type=size_pair(MIN_SIDE, "WIDTHxHEIGHT such as 640x640"), default=(640, 640))
    ap.add_argument(
        "--workers", type=positive_int, default=2, help="also time write_dataset with this many workers"
    )
    args = ap.parse_args(argv)
    w, h = args.size
    cv2.setNumThreads(1)  # one core
    make_scan(np.random.default_rng(999), h, w)  # warm-up

    clock = Clock()
    for i in range(args.images):
        clock.lap("idle")
        scan = make_scan(np.random.default_rng([1, i]), h, w)
        clock.lap("sim")
        bgr = cv2.cvtColor(quantise_converted(convert_scan(scan.high, scan.low)), cv2.COLOR_RGB2BGR)
        clock.lap("conv")
        for img, kind in ((scan.high, "raw"), (scan.low, "raw"), (bgr, "converted")):
            assert cv2.imencode(".png", img, PNG_PARAMS[kind])[0]
        clock.lap("png")
        for img in (scan.high, scan.low, bgr):
            assert cv2.imencode(".png", img, PNG_PARAMS["fast"])[0]
        clock.lap("fast")

    n = args.images
    rows = [
        ("simulate scan (scene + physics) = generation", ["sim"]),
        ("convert_scan + 8-bit", ["conv"]),
        ("PNG encode (2 raw 16-bit + converted)", ["png"]),
        ("PNG encode, `--fast-png` (uncompressed)", ["fast"]),
        ("**end to end** (simulate + convert + PNG)", ["sim", "conv", "png"]),
        ("**end to end, `--fast-png`**", ["sim", "conv", "fast"]),
    ]
    runs = {}
    for workers in sorted({1, args.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SynthConfig(images=n, seed=1, height=h, width=w)
            t0 = time.perf_counter()
            write_dataset(cfg, tmp, workers=workers, progress=False)
            runs[workers] = n / (time.perf_counter() - t0)

    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"synthetic scanner, {w}x{h}, {n} images, {os.cpu_count()} CPUs{load}, cv2 threads 1\n")
    cells = []
    for name, keys in rows:
        cpu = 1000 * sum(clock.cpu[k] for k in keys) / n
        wall = 1000 * sum(clock.wall[k] for k in keys) / n
        cells.append([name, f"{cpu:.1f}", f"{1000 / cpu:.1f}", f"{wall:.1f}", f"{1000 / wall:.1f}"])
    for workers, rate in runs.items():
        label = f"`xscreen synth` writer, {workers} worker(s), incl. disk + json"
        cells.append([label, "", "", f"{1000 / rate:.1f}", f"{rate:.1f}"])
    header = ("stage", "CPU ms / image", "images / s per core (CPU)", "wall ms / image", "images / s (wall)")
    print(markdown_table(header, cells))


if __name__ == "__main__":
    main()
