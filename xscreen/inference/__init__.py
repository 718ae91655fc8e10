"""Inference backends (torch, ONNX Runtime) behind one interface: for the service, the CLI, benchmarks."""

from xscreen.inference.backend import (
    MODEL_STAGES,
    BackendError,
    InferenceBackend,
    ModelInfo,
    TorchBackend,
    make_backend,
    resolve_device,
)

__all__ = [
    "MODEL_STAGES",
    "BackendError",
    "InferenceBackend",
    "ModelInfo",
    "TorchBackend",
    "make_backend",
    "resolve_device",
]
