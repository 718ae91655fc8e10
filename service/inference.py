"""Inference backends behind the service: the interface, the torch implementation and the selector.

Everything above this layer (batching, metrics, responses) only sees ``InferenceBackend``, so the
torch and ONNX Runtime paths answer with identical responses.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from xscreen.errors import XscreenError

if TYPE_CHECKING:
    from xscreen.service.settings import Settings

# Stage names reported by backends (model/detector.py ``predict(timings=...)`` keys).
MODEL_STAGES = ("preprocess", "backbone_fpn", "head_first", "la_grad", "head_second", "postprocess")


class BackendError(XscreenError):
    """The backend cannot be created (missing file, unavailable device, bad weights)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a response says about the model that produced it."""

    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]
    groups: tuple[str, ...]  # group (cutter / liquid container) of each class, same order
    precision: str = "fp32"  # numeric precision of the network: fp32, or int8 for a quantised ONNX export


@runtime_checkable
class InferenceBackend(Protocol):
    """A loaded detector. ``predict`` is called from one worker thread at a time.

    ``images``: converted scans (``training.scans.convert_scan``), float32 [H, W, 3], 0..255.
    Returns one dict per image with numpy ``boxes`` [K, 4] x1y1x2y2 in that scan's pixels,
    ``scores`` [K] and ``labels`` [K] (0-based into ``info.class_names``), and seconds per stage
    for the whole batch (keys from ``MODEL_STAGES`` where the backend can measure them).
    """

    info: ModelInfo
    device: str

    def predict(self, images: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]: ...


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' requested but no CUDA device is available (use auto or cpu)")
    if requested not in ("cuda", "cpu"):
        raise BackendError(f"unknown device {requested!r} (expected auto, cuda or cpu)")
    return requested


def groups_for(class_names: tuple[str, ...]) -> tuple[str, ...]:
    from xscreen.model.classes import group_of

    return tuple(group_of(n) for n in class_names)


class TorchBackend:
    """The PyTorch detector from a safetensors file, with the test-time LA loop (method.md §3)."""

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
        )
        self._lock = threading.Lock()

    def predict(self, images: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        import torch

        t0 = time.perf_counter()
        tensors = [
            torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32)).to(self.device)
            for im in images
        ]
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


def make_backend(settings: Settings) -> InferenceBackend:
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
        from xscreen.service.onnx_backend import OnnxBackend

        return OnnxBackend(
            settings.onnx_path,
            settings.device,
            graph_optimization=settings.ort_graph_optimization,
            intra_op_threads=settings.ort_intra_op_threads,
            expected_sha256=settings.weights_sha256,
        )
    raise BackendError(f"unknown backend {settings.backend!r} (expected torch or onnxruntime)")
