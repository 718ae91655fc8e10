"""Calibration images for the int8 ONNX export: synthetic scans, or images of a dataset split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xscreen.model.config import DetectorConfig
from xscreen.model.onnx_io import OnnxModelError


def synthetic_calibration_images(cfg: DetectorConfig, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` converted scans from the synthetic scanner, at the model's input size (<= 800 px)."""
    from xscreen.scans import convert_scan
    from xscreen.training.synth.scene import make_scan

    side = min(cfg.min_size, 800)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scan = make_scan(rng, side, side)
        out.append(convert_scan(scan.high, scan.low))
    return out


def dataset_calibration_images(
    data_dir: str | Path, split: str, count: int, class_names: tuple[str, ...], seed: int = 0
) -> list[np.ndarray]:
    """``count`` converted images drawn (seeded) from a dataset split (COCO layout, training.dataset)."""
    from xscreen.scans import ScanError, read_converted
    from xscreen.training.dataset import CocoDetection, DatasetError

    try:
        ds = CocoDetection(data_dir, split, class_names=class_names)
    except (DatasetError, ScanError, OSError) as exc:
        raise OnnxModelError(f"calibration data: {exc}") from None
    if not ds.images:
        raise OnnxModelError(f"calibration data: split {split!r} of {data_dir} has no images")
    order = np.random.default_rng(seed).permutation(len(ds.images))[:count]
    try:
        return [read_converted(ds.image_path(int(i))) for i in order]
    except ScanError as exc:
        raise OnnxModelError(f"calibration data: {exc}") from None
