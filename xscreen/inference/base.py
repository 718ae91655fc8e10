"""The inference interface: what a backend is, what it reports about its model, and device choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from xscreen.errors import XscreenError
from xscreen.model.config import LEGACY_SCORE_THRESHOLD
from xscreen.model.timing import MODEL_STAGES as MODEL_STAGES  # the stage names backends report


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
    score_threshold: float = LEGACY_SCORE_THRESHOLD  # the model's own operating threshold (its metadata)


@runtime_checkable
class InferenceBackend(Protocol):
    """A loaded detector. ``predict`` is called from one worker thread at a time.

    ``images``: converted scans (``xscreen.scans.convert_scan``), float32 [H, W, 3], 0..255.
    Returns one dict per image with numpy ``boxes`` [K, 4] x1y1x2y2 in that scan's pixels,
    ``scores`` [K] and ``labels`` [K] (0-based into ``info.class_names``), and seconds per stage
    for the whole batch (keys from ``MODEL_STAGES`` where the backend can measure them).
    """

    info: ModelInfo
    device: str

    def predict(self, images: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]: ...


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a usable GPU is an error.

    Usable means torch reports a device and a one-element tensor can be put on it (a driver/runtime
    mismatch passes ``is_available`` on some set-ups and fails only at the first allocation).
    """
    import torch

    if requested not in ("auto", "cuda", "cpu"):
        raise BackendError(f"unknown device {requested!r} (expected auto, cuda or cpu)")
    if requested == "cpu":
        return "cpu"
    problem = None
    if not torch.cuda.is_available():
        problem = "no CUDA device is available"
    else:
        try:
            torch.zeros(1, device="cuda")
        except (RuntimeError, AssertionError) as exc:
            problem = f"the CUDA device is not usable ({str(exc).splitlines()[0] if str(exc) else exc!r})"
    if problem is None:
        return "cuda"
    if requested == "cuda":
        raise BackendError(f"device 'cuda' requested but {problem} (use auto or cpu)")
    return "cpu"


def torch_device(name: str, flag: str = "--device"):
    """A ``torch.device`` from a flag's value ('cpu', 'cuda', 'cuda:1'); a clear error for a bad one."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BackendError(f"{flag} {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"{flag} {name}: CUDA is not available on this machine")
    return device


def groups_for(class_names: tuple[str, ...]) -> tuple[str, ...]:
    from xscreen.model.classes import group_of

    return tuple(group_of(n) for n in class_names)
