"""Inference backends (torch, ONNX Runtime) behind one interface: for the service, the CLI, benchmarks.

The names below load on first use (PEP 562), so importing a submodule such as ``xscreen.inference.response``
(the answer models, which ``xscreen.client`` parses into) loads neither the backends nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
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
_LAZY = dict.fromkeys(__all__, "xscreen.inference.backend")  # name -> the module that defines it


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
