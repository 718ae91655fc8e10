"""Detector: ATSS R-50-FPN with the Label-aware heads (LAcls, LAreg)."""

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
