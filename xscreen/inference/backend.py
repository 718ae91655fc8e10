"""Inference backends: the torch implementation and the selector (the interface is in ``base``).

The service, ``xscreen detect``, ``xscreen eval --onnx`` and the benchmarks use these; everything above
(batching, metrics, responses) only sees ``InferenceBackend``, so the torch and ONNX Runtime paths
answer with identical responses.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from xscreen.errors import XscreenError
from xscreen.inference.base import (
    MODEL_STAGES,
    BackendError,
    InferenceBackend,
    ModelInfo,
    groups_for,
    resolve_device,
)


class TorchBackend:
    """The PyTorch detector from a safetensors file, with the test-time LA loop (docs/method.md §3)."""

    def __init__(
        self,
        weights_path: str | Path,
        device: str = "auto",
        expected_sha256: str | None = None,
        la_bf16: bool = False,
    ):
        from xscreen.model.weights import load_weights

        path = Path(weights_path)
        if not path.is_file():
            raise BackendError(f"weights file not found: {path}")
        self.device = resolve_device(device)
        # load_weights verifies the sha256 recorded in the file's metadata (WeightsError on mismatch).
        try:
            self.model, winfo = load_weights(path, device=self.device)
        except XscreenError:
            raise
        except Exception as exc:  # anything else from a broken file: still one clear line, no traceback
            raise BackendError(f"cannot load weights {path}: {type(exc).__name__}: {exc}") from None
        if expected_sha256 is not None and winfo.sha256.lower() != expected_sha256.lower():
            raise BackendError(
                f"weights sha256 mismatch for {path}: file has {winfo.sha256}, expected {expected_sha256}"
            )
        self.model.eval()
        self.model.la_grad_bf16 = la_bf16  # opt-in bf16 LA gradient passes (model/label_aware.py)
        names = tuple(winfo.config.class_names)
        self.info = ModelInfo(
            name=str(winfo.name),
            version=str(winfo.version),
            sha256=str(winfo.sha256),
            class_names=names,
            groups=groups_for(names),
            precision="fp32, LA gradients bf16" if la_bf16 else "fp32",
            score_threshold=winfo.score_threshold,
        )
        self._lock = threading.Lock()

    def predict(self, images: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        import torch

        t0 = time.perf_counter()
        # A [3, H, W] view of each [H, W, 3] array, not a host copy (12 bytes per pixel saved per scan): on
        # the CPU the model's resize reads the strided view with bit-identical results
        # (tests/service/test_budget.py); on a GPU the copy is made contiguous on the device.
        views = [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in images]
        tensors = views if self.device == "cpu" else [v.to(self.device).contiguous() for v in views]
        timings: dict[str, float] = {}
        with self._lock, torch.inference_mode():
            outputs = self.model.predict(tensors, timings=timings)
        # what the model did not time itself: host->device copies, result gathering
        timings["transfer"] = time.perf_counter() - t0 - sum(timings.values())
        results = [
            {
                "boxes": out["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                "scores": out["scores"].detach().float().cpu().numpy().reshape(-1),
                "labels": out["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1),
            }
            for out in outputs
        ]
        return results, timings


class BackendSettings(Protocol):
    """What ``make_backend`` reads (the service's ``Settings`` has these fields, XSCREEN_*)."""

    backend: str
    weights: Path
    onnx_path: Path | None
    device: str
    weights_sha256: str | None
    la_bf16: bool
    ort_graph_optimization: str
    ort_intra_op_threads: int


def make_backend(settings: BackendSettings) -> InferenceBackend:
    """Build the backend named by ``settings.backend`` ("torch" or "onnxruntime")."""
    if settings.backend == "torch":
        return TorchBackend(
            settings.weights,
            settings.device,
            expected_sha256=settings.weights_sha256,
            la_bf16=settings.la_bf16,
        )
    if settings.backend == "onnxruntime":
        if settings.onnx_path is None:
            raise BackendError("backend 'onnxruntime' needs onnx_path (XSCREEN_ONNX_PATH)")
        import importlib.util

        from xscreen.extras import missing_extra_message

        if importlib.util.find_spec("onnxruntime") is None:  # an optional extra (xscreen/extras.py)
            raise BackendError(f"backend 'onnxruntime' {missing_extra_message('onnx', 'onnxruntime')}")
        from xscreen.inference.onnx_backend import OnnxBackend

        return OnnxBackend(
            settings.onnx_path,
            settings.device,
            graph_optimization=settings.ort_graph_optimization,
            intra_op_threads=settings.ort_intra_op_threads,
            expected_sha256=settings.weights_sha256,
        )
    raise BackendError(f"unknown backend {settings.backend!r} (expected torch or onnxruntime)")


__all__ = [
    "MODEL_STAGES",
    "BackendError",
    "BackendSettings",
    "InferenceBackend",
    "ModelInfo",
    "TorchBackend",
    "make_backend",
    "resolve_device",
]
