"""Export trained weights to ONNX (full ATSS+LA inference graph, LA loop included) for ONNX Runtime.

``xscreen export --weights W --out model.onnx [--opset N]``: loads the safetensors weights, exports
model.onnx_export.ExportableDetector (dynamic batch, height, width), stores class names, model name,
version, weights sha256 and config in the ONNX metadata, runs onnx.checker and, unless
``--no-verify``, compares ONNX Runtime with the torch model on a random batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

VERIFY_ATOL = 1e-3  # raw logits; fp32 export agrees to ~1e-5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model.onnx_export import DEFAULT_OPSET

    parser.add_argument("--weights", required=True, type=Path, help="safetensors weights (xscreen format)")
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17..20)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check after export"
    )
    parser.add_argument(
        "--debug-la-outputs",
        action="store_true",
        help="also output the LA weights (la_w1, la_w2) for verification; not for serving",
    )


def verify(onnx_path: Path, detector, seed: int = 0) -> dict[str, float]:
    """Max |ORT - torch| per output on a random normalised batch of the model's own input size."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from model.onnx_export import INPUT_NAME, OUTPUT_NAMES

    cfg = detector.cfg
    g = torch.Generator().manual_seed(seed)
    h = (min(cfg.min_size, 512) + 31) // 32 * 32
    batch = torch.randn(1, 3, h, h + 64, generator=g)
    with torch.no_grad():
        ref = detector.forward_raw(batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
    return {
        name: float(np.abs(r.numpy() - o).max()) for name, r, o in zip(OUTPUT_NAMES, ref, got, strict=True)
    }


def run(args: argparse.Namespace) -> int:
    from model.onnx_export import export_weights

    path, meta, detector = export_weights(
        args.weights, args.out, opset=args.opset, debug_la=args.debug_la_outputs
    )
    size_mb = path.stat().st_size / 2**20
    print(
        f"wrote {path} ({size_mb:.1f} MiB): {meta.config.name} la_mode={meta.config.la_mode} "
        f"opset={args.opset} classes={len(meta.class_names)} weights_sha256={meta.sha256}"
    )
    print("onnx.checker: ok")
    if not args.no_verify:
        diffs = verify(path, detector)
        print("ONNX Runtime vs torch, max abs diff: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
        if max(diffs.values()) > VERIFY_ATOL:
            from model.onnx_export import OnnxModelError

            raise OnnxModelError(f"{path}: ONNX Runtime disagrees with torch by more than {VERIFY_ATOL}")
    return 0
