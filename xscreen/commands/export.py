"""Export trained weights to ONNX (full ATSS+LA inference graph, LA loop included) for ONNX Runtime.

``xscreen export --weights W --out model.onnx [--opset N] [--int8 ...]``: loads the safetensors
weights, exports model.onnx_export.ExportableDetector (dynamic batch, height, width), stores class
names, model name, version, weights sha256 and config in the ONNX metadata, runs onnx.checker and,
unless ``--no-verify``, compares ONNX Runtime with the torch model on a random batch.

``--int8`` writes the static int8 version instead (model.onnx_quantize), calibrated on synthetic
scans or on ``--calibration-data``; it approximates the model, so the comparison is reported, not
enforced; measure its accuracy with ``xscreen eval --onnx``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

VERIFY_ATOL = 1e-3  # raw logits; fp32 export agrees to ~1e-5
# LA models differentiate a ReLU network: a pre-activation within float noise of zero flips its mask in
# the backward pass, so single outputs may move further; the release-parity bounds (docs/method.md §7.12)
LA_VERIFY_MAX, LA_VERIFY_P99 = 5e-3, 5e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xscreen.model.onnx_io import DEFAULT_OPSET

    parser.add_argument("--weights", required=True, type=Path, help="safetensors weights (xscreen format)")
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17..20)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check after export"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="write a static int8 (QDQ) graph for faster CPU inference; approximates the model",
    )
    parser.add_argument(
        "--calibration-data",
        type=Path,
        help="--int8: calibrate on this dataset's images (COCO layout, as xscreen eval); default: "
        "scans from the synthetic scanner",
    )
    parser.add_argument("--calibration-split", default="train", help="--int8: dataset split (default train)")
    parser.add_argument(
        "--calibration-images", type=int, default=32, help="--int8: calibration images (default 32)"
    )
    parser.add_argument("--calibration-seed", type=int, default=0, help="--int8: which images/scans")
    parser.add_argument(
        "--debug-la-outputs",
        action="store_true",
        help="also output the LA weights (la_w1, la_w2) for verification; not for serving",
    )


def verify(onnx_path: Path, detector, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(max, p99) of |ORT - torch| per output on a random normalised batch of the model's input size."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES

    cfg = detector.cfg
    g = torch.Generator().manual_seed(seed)
    h = (min(cfg.min_size, 512) + 31) // 32 * 32
    batch = torch.randn(1, 3, h, h + 64, generator=g)
    with torch.no_grad():
        ref = detector.forward_raw(batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
    diffs = {}
    for name, r, o in zip(OUTPUT_NAMES, ref, got, strict=True):
        err = np.abs(r.numpy() - o).reshape(-1)
        diffs[name] = (float(err.max()), float(np.percentile(err, 99)))
    return diffs


def disagreement(diffs: dict[str, tuple[float, float]], uses_la: bool) -> str | None:
    """None when ORT and torch agree within the bounds for this kind of model, else what is over."""
    worst = max(m for m, _ in diffs.values())
    worst_p99 = max(p for _, p in diffs.values())
    if uses_la:
        if worst > LA_VERIFY_MAX or worst_p99 > LA_VERIFY_P99:
            return (
                f"max {worst:.2e} / p99 {worst_p99:.2e}, over an LA model's {LA_VERIFY_MAX} / {LA_VERIFY_P99}"
            )
        return None
    return f"max {worst:.2e}, over {VERIFY_ATOL}" if worst > VERIFY_ATOL else None


def calibration_source(args: argparse.Namespace):
    """--int8: a function config -> (converted images, description) for model.onnx_export.export_weights."""
    from xscreen.model.onnx_export import OnnxModelError
    from xscreen.training.calibration import dataset_calibration_images, synthetic_calibration_images

    n, seed = args.calibration_images, args.calibration_seed
    if n < 1:
        raise OnnxModelError(f"--calibration-images must be at least 1, got {n}")
    if seed < 0:
        raise OnnxModelError(f"--calibration-seed must be >= 0, got {seed}")
    if args.calibration_data is not None and not args.calibration_data.is_dir():
        raise OnnxModelError(f"--calibration-data: {args.calibration_data} is not a directory")

    def source(cfg):
        if args.calibration_data is None:
            side = min(cfg.min_size, 800)
            images = synthetic_calibration_images(cfg, n, seed)
            return images, f"{n} synthetic {side}x{side} scans, seed {seed}"
        data, split = args.calibration_data, args.calibration_split
        images = dataset_calibration_images(data, split, n, cfg.class_names, seed)
        return images, f"{len(images)} images of {data} split {split}, seed {seed}"

    return source


def run(args: argparse.Namespace) -> int:
    from xscreen.model.onnx_export import OnnxModelError, export_weights

    if not args.int8 and args.calibration_data is not None:
        raise OnnxModelError("--calibration-data only applies with --int8")
    path, meta, detector = export_weights(
        args.weights,
        args.out,
        opset=args.opset,
        debug_la=args.debug_la_outputs,
        calibration=calibration_source(args) if args.int8 else None,
    )
    size_mb = path.stat().st_size / 2**20
    print(
        f"wrote {path} ({size_mb:.1f} MiB): {meta.config.name} la_mode={meta.config.la_mode} "
        f"opset={args.opset} precision={meta.precision} classes={len(meta.class_names)} "
        f"weights_sha256={meta.sha256}"
    )
    if meta.precision == "int8":
        print(f"int8 calibration: {meta.raw.get('calibration')}")
    print("onnx.checker: ok")
    if not args.no_verify:
        diffs = verify(path, detector)
        print(
            "ONNX Runtime vs torch, max abs diff: " + ", ".join(f"{k}={m:.2e}" for k, (m, _) in diffs.items())
        )
        print(
            "ONNX Runtime vs torch, p99 abs diff: " + ", ".join(f"{k}={p:.2e}" for k, (_, p) in diffs.items())
        )
        if meta.precision == "int8":
            print("int8 approximates the model: measure its accuracy with `xscreen eval --onnx`")
        elif (problem := disagreement(diffs, meta.config.uses_la)) is not None:
            raise OnnxModelError(f"{path}: ONNX Runtime disagrees with torch: {problem}")
    return 0
