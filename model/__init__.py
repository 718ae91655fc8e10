"""Detector: ATSS R-50-FPN with the Label-aware heads (LAcls, LAreg).

The names below are loaded on first use (PEP 562), so that light modules of this package
(``classes``, ``onnx_io``) can be imported without torch, e.g. by ``xscreen --help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if __name__ != "xscreen.model":  # the folder's bare name, e.g. from the repository root
    raise ImportError("import xscreen.model, not model: model/ is the package xscreen.model")

_EXPORTS = {
    "ATSSDetector": "detector",
    "ConfigError": "config",
    "DetectorConfig": "config",
    "WeightsError": "errors",
    "WeightsInfo": "weights",
    "build_detector": "detector",
    "load_backbone_weights": "backbone",
    "load_config": "config",
    "load_weights": "weights",
    "save_weights": "weights",
}

__all__ = [
    "ATSSDetector",
    "ConfigError",
    "DetectorConfig",
    "WeightsError",
    "WeightsInfo",
    "build_detector",
    "load_backbone_weights",
    "load_config",
    "load_weights",
    "save_weights",
]

if TYPE_CHECKING:
    from xscreen.model.backbone import load_backbone_weights
    from xscreen.model.config import ConfigError, DetectorConfig, load_config
    from xscreen.model.detector import ATSSDetector, build_detector
    from xscreen.model.errors import WeightsError
    from xscreen.model.weights import WeightsInfo, load_weights, save_weights


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xscreen.model.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
