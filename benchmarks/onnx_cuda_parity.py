"""ONNX Runtime (CUDA provider when present) vs torch on one device: detections parity and speed.

    PYTHONPATH=. python benchmarks/onnx_cuda_parity.py [--config atss_lacls_r50] [--size 800x1333] \
        [--device cuda]

Run from the repository root (benchmarks/gpu_check.sh does): the sharpened head is the tests' own
(tests/support/detectors.py). Random weights (a sharpened head, so there are detections), saved and
exported with the repo's own code; both backends (xscreen.inference) run the same converted image.
Prints max |score| and box differences of matched detections and the median predict seconds of each.
Exit 1 when the requested device is refused by ONNX Runtime (e.g. a CPU-only onnxruntime wheel), with
the reason.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xscreen.argtypes import int_at_least, size_pair


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="atss_lacls_r50")
    p.add_argument("--size", type=size_pair(64, "HEIGHTxWIDTH"), default=(800, 1333))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--runs", type=int_at_least(1), default=5)
    args = p.parse_args(argv)
    from tests.support.detectors import sharpen_head
    from xscreen.errors import XscreenError
    from xscreen.inference.backend import TorchBackend
    from xscreen.inference.onnx_backend import OnnxBackend
    from xscreen.model import build_detector, load_config, save_weights
    from xscreen.model.onnx_export import export_weights

    h, w = args.size
    try:
        cfg = load_config(args.config).with_overrides(min_size=min(h, w), max_size=max(h, w))
    except XscreenError as exc:  # an unknown or invalid --config: a usage error, not a traceback
        p.error(str(exc))
    torch.manual_seed(0)
    det = build_detector(cfg).eval()
    sharpen_head(det, std=0.02)
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        weights, onnx_path = Path(tmp) / "w.safetensors", Path(tmp) / "m.onnx"
        save_weights(det, weights)
        t0 = time.perf_counter()
        export_weights(weights, onnx_path)
        print(f"exported {cfg.name} in {time.perf_counter() - t0:.1f} s")
        try:
            ort_backend = OnnxBackend(onnx_path, args.device)
        except XscreenError as exc:
            print(f"ONNX Runtime refused device {args.device}: {exc}")
            return 1
        torch_backend = TorchBackend(weights, args.device)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        outs = {}
        for name, backend in (("torch", torch_backend), ("onnxruntime", ort_backend)):
            backend.predict([image])  # warm-up
            for _ in range(args.runs):
                t0 = time.perf_counter()
                (outs[name],), _ = backend.predict([image])
                times[name].append(time.perf_counter() - t0)
    a, b = outs["torch"], outs["onnxruntime"]
    n = min(len(a["scores"]), len(b["scores"]))
    print(f"{cfg.name} {h}x{w} on {args.device}: torch {len(a['scores'])} detections, ORT {len(b['scores'])}")
    if n:
        print(
            f"top-{n} max |score diff| {np.abs(a['scores'][:n] - b['scores'][:n]).max():.2e}, "
            f"max |box diff| {np.abs(a['boxes'][:n] - b['boxes'][:n]).max():.2e} px, "
            f"labels equal {bool((a['labels'][:n] == b['labels'][:n]).all())}"
        )
    for name, ts in times.items():
        print(f"{name}: median predict {statistics.median(ts):.4f} s over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
