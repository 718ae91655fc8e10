"""Detector: ATSS R-50-FPN with the Label-aware heads (LAcls, LAreg)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names below are imported on first use (PEP 562), so that light modules of this package
# (model.timing, model.classes) can be imported without torch, e.g. by the service at start-up.
_EXPORTS = {
    "ATSSDetector": "detector",
    "build_detector": "detector",
    "load_backbone_weights": "backbone",
    "ConfigError": "config",
    "DetectorConfig": "config",
    "load_config": "config",
    "WeightsError": "weights",
    "WeightsInfo": "weights",
    "load_weights": "weights",
    "save_weights": "weights",
}

if TYPE_CHECKING:
    from xscreen.model.backbone import load_backbone_weights
    from xscreen.model.config import ConfigError, DetectorConfig, load_config
    from xscreen.model.detector import ATSSDetector, build_detector
    from xscreen.model.weights import WeightsError, WeightsInfo, load_weights, save_weights

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
