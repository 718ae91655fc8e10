"""Detector: ATSS R-50-FPN with the Label-aware heads (LAcls, LAreg)."""

from model.backbone import load_backbone_weights
from model.config import ConfigError, DetectorConfig, load_config
from model.detector import ATSSDetector, build_detector
from model.weights import WeightsError, WeightsInfo, load_weights, save_weights

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
