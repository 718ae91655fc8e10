"""Static int8 quantisation of an exported detector, for faster ONNX Runtime inference on CPU.

The fp32 export (model/onnx_export.py) matches torch to ~1e-5 but runs only ~1.1x faster than torch
eager once convolutions dominate (docs/onnx.md): ORT's fp32 Conv is as fast as torch's. Its int8
Conv (QLinearConv, VNNI on x86) is ~3.5x faster, so this module offers an int8 variant of the same
graph, LA loop included, with ONNX Runtime's own tooling:

1. ``quant_pre_process`` (ORT's recommended pre-pass): folds the Identity-shared biases the torch
   exporter leaves, without which ORT cannot fuse those convolutions into QLinearConv;
2. ``quantize_static`` in QDQ format, Conv nodes only, per-channel int8 weights and uint8
   activations, ranges calibrated (MinMax) on real network inputs that the caller hands in
   (``xscreen export`` takes synthetic scans by default, or images of a dataset: training.calibration).

Everything that is not a convolution (GroupNorm, the LA sigmoid/reweighting, the heads' outputs)
stays fp32. The result is an approximation of the model: ``xscreen eval --onnx`` measures its
accuracy; docs/onnx.md has the figures for the bundled weights.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from xscreen.model.config import DetectorConfig
from xscreen.model.onnx_io import INPUT_NAME, OnnxModelError


def network_inputs(images: Iterable[np.ndarray], cfg: DetectorConfig) -> list[np.ndarray]:
    """Converted [H, W, 3] images -> one normalised, padded [1, 3, h, w] float32 graph input each."""
    from xscreen.model.transform import network_image, pad_batch

    return [pad_batch([network_image(im, cfg.min_size, cfg.max_size)])[0].numpy() for im in images]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantisation tool logs one INFO line per copied bias on the root logger; keep warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: list[np.ndarray],
    *,
    input_name: str = INPUT_NAME,
    pre_process: bool = True,
) -> Path:
    """Write the static int8 (QDQ) version of an fp32 export, calibrated on ``calibration`` batches.

    The caller restores the xscreen metadata (model.onnx_export.apply_metadata); ORT's tool does
    not promise to carry ``metadata_props`` over. ``pre_process=False`` skips ORT's pre-pass (only to
    measure what it buys: benchmarks/onnx_conv_alternatives.py); ``input_name``: the graph's input.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise OnnxModelError("int8 quantisation needs at least one calibration image")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="xscreen-quant-") as tmp, _quiet_root_logger():
        pre = Path(tmp) / "pre.onnx" if pre_process else Path(fp32_path)
        if pre_process:
            # symbolic shape inference cannot resolve the dynamic LA graph; ORT's optimiser pass matters
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path
