"""Synthetic scanner speed on one core: per-stage milliseconds and images/s, printed as a markdown table.

.venv/bin/python benchmarks/synth_speed.py [--images 30] [--size 640x640] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np

from training.scans import convert_scan, quantise_converted
from training.synth.scene import make_scan
from training.synth.writer import PNG_PARAMS, SynthConfig, write_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--size", default="640x640")
    ap.add_argument("--workers", type=int, default=2, help="also time write_dataset with this many workers")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    cv2.setNumThreads(1)  # one core
    make_scan(np.random.default_rng(999), h, w)  # warm-up

    t_scene, t_conv, t_png, t_fast = [], [], [], []
    for i in range(args.images):
        t0 = time.perf_counter()
        scan = make_scan(np.random.default_rng([1, i]), h, w)
        t1 = time.perf_counter()
        conv = quantise_converted(convert_scan(scan.high, scan.low))
        t2 = time.perf_counter()
        bgr = cv2.cvtColor(conv, cv2.COLOR_RGB2BGR)
        for img, kind in ((scan.high, "raw"), (scan.low, "raw"), (bgr, "converted")):
            ok, _ = cv2.imencode(".png", img, PNG_PARAMS[kind])
            assert ok
        t3 = time.perf_counter()
        for img in (scan.high, scan.low, bgr):
            ok, _ = cv2.imencode(".png", img, PNG_PARAMS["fast"])
            assert ok
        t4 = time.perf_counter()
        t_scene.append(t1 - t0)
        t_conv.append(t2 - t1)
        t_png.append(t3 - t2)
        t_fast.append(t4 - t3)

    def ms(v):
        return 1000 * float(np.mean(v))

    rows = [
        ("simulate scan (scene + physics)", ms(t_scene)),
        ("convert_scan + 8-bit", ms(t_conv)),
        ("PNG encode (2 raw 16-bit + converted)", ms(t_png)),
        ("PNG encode, `--fast-png` (uncompressed)", ms(t_fast)),
    ]
    total = rows[0][1] + rows[1][1] + rows[2][1]
    total_fast = rows[0][1] + rows[1][1] + rows[3][1]
    runs = {}
    for workers in sorted({1, args.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SynthConfig(images=args.images, seed=1, height=h, width=w)
            t0 = time.perf_counter()
            write_dataset(cfg, tmp, workers=workers, progress=False)
            runs[workers] = args.images / (time.perf_counter() - t0)

    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"synthetic scanner, {w}x{h}, {args.images} images, {os.cpu_count()} CPUs{load}, cv2 threads 1\n")
    print("| stage (one core) | ms / image | images / s |")
    print("|---|---:|---:|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} | {1000 / v:.1f} |")
    print(f"| **generation only** (simulate) | {rows[0][1]:.1f} | {1000 / rows[0][1]:.1f} |")
    print(f"| **end to end** (simulate + convert + PNG) | {total:.1f} | {1000 / total:.1f} |")
    print(f"| **end to end, `--fast-png`** | {total_fast:.1f} | {1000 / total_fast:.1f} |")
    for workers, rate in runs.items():
        label = f"`xscreen synth` writer, {workers} worker(s), incl. disk + json"
        print(f"| {label} | {1000 / rate:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
