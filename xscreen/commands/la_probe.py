"""`xscreen la-probe`: how much of a trained LA model's effect rides on its test-time labels."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from xscreen.argtypes import positive_int

MODES = ("pseudo", "oracle", "off")  # training.la_probe.MODES; repeated here so --help needs no torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", nargs="+", required=True, help="LA model weights (.safetensors), e.g. one per seed"
    )
    p.add_argument("--data", required=True, help="dataset folder (annotations/, images/)")
    p.add_argument("--split", default="test")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images of the split")
    p.add_argument("--stat-images", type=positive_int, default=20, help="images for the LA-weight statistics")
    p.add_argument("--out", default=None, help="also write the per-file metrics here (JSON)")


def run(args: argparse.Namespace) -> int:
    from xscreen.tables import markdown_table
    from xscreen.training.la_probe import load, probe, table, weight_stats

    logging.getLogger().setLevel(logging.WARNING)
    per_file, stats = [], []
    for w in args.weights:
        model, ds = load(Path(w), Path(args.data), args.split)
        per_file.append(probe(model, ds, args.modes, args.limit))
        stats.append(weight_stats(model, ds, args.stat_images))
    if args.out:
        Path(args.out).write_text(
            json.dumps(dict(zip(args.weights, per_file, strict=True)), indent=2, default=str) + "\n"
        )
    print(f"{len(per_file)} weights file(s), split {args.split!r}; COCO AP in %, mean ± std over the files\n")
    print(table(per_file, args.modes))
    if any(stats):
        print(f"\nLA weights on the first {args.stat_images} images (pseudo-labels), worst file per level\n")
        rows = []
        for level in range(max(len(s) for s in stats)):
            per_file_level = [s[level] for s in stats if len(s) > level]
            worst = [max(r[k] for r in per_file_level) for k in ("w_mean", "w_max", "change")]
            rows.append([f"P{level + 3}", *(f"{v:.1e}" for v in worst)])
        header = ("level", "mean abs(w - 0.5)", "max abs(w - 0.5)", "mean norm(x_new - x) / norm(x)")
        print(markdown_table(header, rows, align="llll"))
    return 0
