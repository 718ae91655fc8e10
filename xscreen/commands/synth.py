"""Simulate a dual-energy X-ray dataset of bag scans (raw 16-bit pairs, converted images, COCO json; with
``--format dicos`` also DICOS DX pairs and ground-truth TDRs).

Example: ``xscreen synth --out synth-demo --images 50 --seed 1``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from xscreen.argtypes import size_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output dataset directory")
    parser.add_argument("--images", required=True, type=int, help="number of scans to simulate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    parser.add_argument(
        "--size",
        type=size_pair(1, "WIDTHxHEIGHT such as 640x640"),
        default=(640, 640),
        help="WIDTHxHEIGHT in pixels (default 640x640)",
    )
    parser.add_argument(
        "--overlap",
        default="medium",
        help="how often a threat object is placed over another: low (0.1), medium (0.3), high (0.6) "
        "or a probability 0..1 (default medium)",
    )
    parser.add_argument(
        "--similar-clutter",
        type=float,
        default=0.2,
        help="probability per object of similar-looking clutter over it (default 0.2)",
    )
    parser.add_argument(
        "--splits", default="0.7,0.15,0.15", help="train,val,test fractions (default 0.7,0.15,0.15)"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument(
        "--format",
        choices=("png", "dicos"),
        default="png",
        help="dicos: also write each scan as a DICOS DX pair and its ground truth as a TDR (default png)",
    )
    parser.add_argument("--fast-png", action="store_true", help="store PNGs uncompressed (faster, ~3x disk)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (an earlier synth dataset there is replaced)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_overlap(text: str) -> float:
    from xscreen.training.synth.scene import OVERLAP_LEVELS
    from xscreen.training.synth.writer import SynthError

    key = str(text).strip().lower()
    if key in OVERLAP_LEVELS:
        return OVERLAP_LEVELS[key]
    try:
        rate = float(key)
    except ValueError:
        raise SynthError(f"--overlap must be low, medium, high or a number in 0..1, got {text!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise SynthError(f"--overlap rate must be within 0..1, got {rate}")
    return rate


def parse_splits(text: str) -> tuple[float, float, float]:
    from xscreen.training.synth.writer import SynthError

    try:
        parts = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise SynthError(f"--splits must be three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise SynthError(f"--splits must be three non-negative fractions summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from xscreen.training.synth import MIN_SIDE
    from xscreen.training.synth.writer import (
        SynthConfig,
        SynthError,
        check_output_dir,
        remove_previous_output,
        write_dataset,
    )

    if args.images < 1:
        raise SynthError(f"--images must be at least 1, got {args.images}")
    width, height = args.size
    if min(width, height) < MIN_SIDE or max(width, height) > 8192:
        raise SynthError(f"--size must be between {MIN_SIDE} and 8192 pixels per side, got {width}x{height}")
    if args.workers < 1:
        raise SynthError(f"--workers must be at least 1, got {args.workers}")
    if not 0.0 <= args.similar_clutter <= 1.0:
        raise SynthError(f"--similar-clutter must be within 0..1, got {args.similar_clutter}")
    cfg = SynthConfig(
        images=args.images,
        seed=args.seed,
        height=height,
        width=width,
        overlap_rate=parse_overlap(args.overlap),
        similar_rate=args.similar_clutter,
        splits=parse_splits(args.splits),
        fast_png=args.fast_png,
        dicos=args.format == "dicos",
    )
    check_output_dir(args.out, args.overwrite)
    if args.overwrite:
        removed = remove_previous_output(args.out)  # no stale scans from an earlier, larger run
        if removed:
            print(f"--overwrite: removed {removed} files of an earlier synthetic dataset in {args.out}")
    t0 = time.perf_counter()
    summary = write_dataset(cfg, args.out, workers=args.workers, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(
        f"wrote {cfg.images} scans ({width}x{height}) to {args.out} "
        f"in {dt:.1f} s ({cfg.images / dt:.1f} img/s)"
    )
    print("split  images  boxes  challenging")
    for split in ("train", "val", "test"):
        s = summary[split]
        print(f"{split:<6} {s['images']:>6} {s['boxes']:>6} {s['challenging']:>12}")
    print("objects per class: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()))
    return 0
