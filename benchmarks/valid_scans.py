"""Nothing valid is refused: every scan of an ``xscreen synth`` split through the service's scan input.

Reads the split's raw 16-bit PNG pairs and (with ``xscreen synth --format dicos``) its DICOS DX pairs, and
re-encodes the first ``--reencode`` DX pairs in every transfer syntax xscreen decodes. Each pair goes
through ``prepare_scan``, the same decode, bounds, energy-order check (docs/method.md §1a) and conversion
as ``POST /detect``. Prints one row per input kind: how many were accepted and why any were refused.

    xscreen synth --out runs/valid --images 200 --seed 8 --splits 0,0,1 --format dicos
    python benchmarks/valid_scans.py --data runs/valid --split test
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from xscreen.argtypes import positive_int
from xscreen.inference.pipeline import prepare_scan
from xscreen.scans import ScanError
from xscreen.scans.dicos import dx, files
from xscreen.service.errors import scan_error_to_api

SYNTAXES = {
    "explicit LE": files.EXPLICIT_LE,
    "implicit LE": files.IMPLICIT_LE,
    "deflated LE": files.DEFLATED_LE,
    "JPEG Lossless": files.JPEG_LOSSLESS,
    "JPEG Lossless SV1": files.JPEG_LOSSLESS_SV1,
    "JPEG-LS": files.JPEG_LS_LOSSLESS,
    "RLE": files.RLE_LOSSLESS,
}


def _verdict(high: bytes, low: bytes, max_pixels: int) -> str:
    try:
        prepare_scan(high, low, width=None, height=None, max_pixels=max_pixels)
    except ScanError as exc:  # the code POST /detect answers with
        return scan_error_to_api(exc).code
    return "accepted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an xscreen synth output folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--reencode", type=positive_int, default=30, help="DX pairs re-encoded per syntax")
    parser.add_argument("--max-pixels", type=positive_int, default=25_000_000)
    args = parser.parse_args(argv)
    highs = sorted((args.data / "raw" / args.split).glob("*_high.png"))
    if not highs:
        parser.error(f"no raw pairs in {args.data / 'raw' / args.split} (run xscreen synth first)")
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for high in highs:
        low = high.with_name(high.name.replace("_high", "_low"))
        rows["16-bit PNG"][_verdict(high.read_bytes(), low.read_bytes(), args.max_pixels)] += 1
    dx_highs = sorted((args.data / "dicos" / args.split).glob("*_high.dcm"))
    for i, high in enumerate(dx_highs):
        hb, lb = high.read_bytes(), high.with_name(high.name.replace("_high", "_low")).read_bytes()
        rows["DICOS DX as written"][_verdict(hb, lb, args.max_pixels)] += 1
        if i < args.reencode:
            pair = dx.read_dx_pair(hb, lb)
            for name, syntax in SYNTAXES.items():
                a, b = dx.write_dx_pair(pair.high.pixels, pair.low.pixels, transfer_syntax=syntax)
                rows[f"DICOS DX, {name}"][_verdict(a, b, args.max_pixels)] += 1
    print(f"split {args.split} of {args.data}: {len(highs)} raw pairs, {len(dx_highs)} DX pairs\n")
    print("| input | pairs | accepted | refused (why) |")
    print("|---|---:|---:|---|")
    refused_any = False
    for kind, counts in rows.items():
        refused = {k: v for k, v in counts.items() if k != "accepted"}
        refused_any |= bool(refused)
        why = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "-"
        print(f"| {kind} | {sum(counts.values())} | {counts['accepted']} | {why} |")
    return 1 if refused_any else 0


if __name__ == "__main__":
    sys.exit(main())
