"""Which engine is off when ONNX Runtime and torch disagree: both fp32 runs against torch in float64.

Usage, from the repository root (the sharpened head is the tests' own, tests/support/detectors.py):

    PYTHONPATH=. python benchmarks/onnx_precision.py [--config small_lareg] [--seed 1] [--size 224x288]

The LA loop's gradient is piecewise smooth: a ReLU whose pre-activation is within fp32 rounding of 0
can fall on either side in two engines, and its LA weight then moves the outputs around it (and,
through GroupNorm, a little everywhere on its level). This script builds the detector of
tests/inference/test_onnx_export.py's LAreg parity test (small config, 64-channel FPN, a sharpened random
head: conv weights std 0.05, class bias -2, level scales 1 + 0.1 i), exports it with the LA loop, runs one
synthetic scan (seed 7, 256 x 320) through torch fp32, torch float64 and ONNX Runtime fp32, and prints
the pairwise differences per output, then the first-pass ReLUs that torch fp32 and float64 put on
different sides (docs/onnx.md, "Tests").
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from xscreen.argtypes import non_negative_int, size_pair
from xscreen.tables import markdown_table


def sharpened_detector(name: str, seed: int, min_size: int, max_size: int):
    from tests.support.detectors import sharpen_head
    from xscreen.model import build_detector, load_config

    cfg = load_config(name).with_overrides(min_size=min_size, max_size=max_size, fpn_channels=64)
    torch.manual_seed(seed)
    det = build_detector(cfg).eval()
    sharpen_head(det, std=0.05, scale_step=0.1)
    return det


def scan_batch(det) -> torch.Tensor:
    from xscreen.model.transform import normalize, pad_batch, resize_to_fit
    from xscreen.scans import convert_scan
    from xscreen.training.synth.scene import make_scan

    s = make_scan(np.random.default_rng(7), 256, 320)
    t = torch.from_numpy(convert_scan(s.high, s.low).transpose(2, 0, 1).copy())
    t, _ = resize_to_fit(t, None, det.cfg.min_size, det.cfg.max_size)
    return pad_batch([normalize(t)])[0]


def relu_flips(det, det64, batch: torch.Tensor) -> list[list]:
    """First-pass tower ReLUs on different sides in fp32 and float64: [level, layer, count, min |pre64|]."""
    rows = []
    tower = "cls_convs" if det.cfg.la_mode == "cls" else "reg_convs"
    with torch.no_grad():
        f32, f64 = det.backbone(batch), det64.backbone(batch.double())
        for level, (h, g) in enumerate(zip(f32, f64, strict=True)):
            layer = 0
            for m, m64 in zip(getattr(det.head, tower), getattr(det64.head, tower), strict=True):
                h, g = m(h), m64(g)
                if isinstance(m, torch.nn.GroupNorm):
                    layer += 1
                    flip = (h > 0) != (g > 0)
                    if flip.any():
                        rows.append(
                            [f"P{level + 3}", layer, int(flip.sum()), f"{float(g[flip].abs().min()):.2e}"]
                        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small_lareg", help="detector config (default small_lareg)")
    p.add_argument(
        "--seed", type=non_negative_int, default=1, help="weight seed (default 1, as the parity test)"
    )
    p.add_argument(
        "--size", type=size_pair(32, "MINxMAX such as 224x288"), default=(224, 288), help="input MINxMAX"
    )
    args = p.parse_args(argv)
    from xscreen.errors import XscreenError

    try:
        det = sharpened_detector(args.config, args.seed, *args.size)
    except XscreenError as exc:  # an unknown or invalid --config: a usage error, not a traceback
        p.error(str(exc))
    det64 = copy.deepcopy(det).double()
    batch = scan_batch(det)
    with torch.no_grad():
        out32 = [t.numpy() for t in det.forward_raw(batch)]
        out64 = [t.numpy() for t in det64.forward_raw(batch.double())]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(det, Path(tmp) / "m.onnx", name="precision", version="1", sha256="0" * 64)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out_ort = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
    runs = {"torch fp32": out32, "torch float64": out64, "ORT fp32": out_ort}
    rows = []
    for a, b in (("ORT fp32", "torch fp32"), ("torch fp32", "torch float64"), ("ORT fp32", "torch float64")):
        for k, name in enumerate(OUTPUT_NAMES):
            ref = runs[b][k]
            scale = max(1.0, float(np.abs(ref).max()))
            err = np.abs(runs[a][k] - ref).reshape(*ref.shape[:2], -1).max(axis=2)
            rows.append([f"{a} vs {b}", name, f"{err.max():.2e}", f"{(err > 1e-4 * scale).mean():.2%}"])
    n_anchors = out32[0].shape[1]
    print(
        f"{args.config}, seed {args.seed}, input {batch.shape[-2]}x{batch.shape[-1]}, {n_anchors} locations\n"
    )
    print(markdown_table(["pair", "output", "max abs diff", "locations off by > 1e-4 x scale"], rows))
    flips = relu_flips(det, det64, batch)
    print("\nfirst-pass ReLUs that torch fp32 and float64 put on different sides:")
    if flips:
        print(markdown_table(["level", "layer", "units", "smallest |pre-activation| (float64)"], flips))
    else:
        print("none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
