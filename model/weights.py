"""Detector weights I/O: one .safetensors file, JSON metadata in its header, sha256-verified; no pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from xscreen import __version__ as xscreen_version
from xscreen.errors import permission_denied
from xscreen.model.config import (
    LEGACY_SCORE_THRESHOLD,
    ConfigError,
    DetectorConfig,
    config_from_json,
    load_config,
)
from xscreen.model.detector import ATSSDetector
from xscreen.model.errors import WeightsError

log = logging.getLogger(__name__)

FORMAT = "xscreen-detector"
FORMAT_VERSION = 1
# Files that record no operating point get LEGACY_SCORE_THRESHOLD (model.config). New files carry
# ``operating_point`` in their header (training.threshold).


@dataclass(frozen=True)
class WeightsInfo:
    config: DetectorConfig
    sha256: str
    format_version: int
    name: str
    version: str
    metadata: dict = field(default_factory=dict)
    operating_point: dict | None = None  # score_threshold, rule, precision/recall/F1 on the val split

    @property
    def score_threshold(self) -> float:
        """The model's own threshold; LEGACY_SCORE_THRESHOLD for a file that records none."""
        if self.operating_point is None:
            return LEGACY_SCORE_THRESHOLD
        return float(self.operating_point["score_threshold"])


def check_operating_point(op, source: str = "operating point") -> dict:
    """``op`` as a dict whose ``score_threshold`` is a number in [0, 1] and ``rule`` a string."""
    if not isinstance(op, dict):
        raise WeightsError(f"{source}: operating point must be a JSON object, got {type(op).__name__}")
    t = op.get("score_threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise WeightsError(f"{source}: operating point score_threshold must be a number in [0, 1], got {t!r}")
    if not isinstance(op.get("rule"), str) or not op["rule"]:
        raise WeightsError(f"{source}: operating point has no rule (how the threshold was chosen)")
    return {**op, "score_threshold": float(t)}


def operating_point_of(meta: dict[str, str], source: str) -> dict | None:
    """The header's operating point (None, with one log line, in a file made before they were recorded)."""
    raw = meta.get("operating_point")
    if raw is None:
        log.info(
            "%s records no operating threshold (made before weights carried one, or saved before any "
            "validation): using the old default score threshold %g",
            source,
            LEGACY_SCORE_THRESHOLD,
        )
        return None
    try:
        op = json.loads(raw)
    except json.JSONDecodeError:
        raise WeightsError(f"{source}: operating_point in the header is not JSON") from None
    return check_operating_point(op, source)


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 over the tensors in sorted name order, each as
    ``name \\0 dtype \\0 json(shape) \\0 raw little-endian bytes`` (dtype like ``torch.float16``)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(str(t.dtype).encode() + b"\0")
        h.update(json.dumps(list(t.shape)).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(
    model,
    path: str | Path,
    *,
    half: bool = False,
    metadata: dict | None = None,
    operating_point: dict | None = None,
) -> str:
    """Write ``model``'s state dict (fp16 floats if ``half``) with its config; returns the sha256.

    ``operating_point``: the threshold the model is served with and how it was chosen
    (training.threshold.select_threshold); stored as the header's ``operating_point`` JSON.
    """

    cfg: DetectorConfig = model.cfg
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    digest = tensors_sha256(tensors)
    meta = dict(metadata or {})
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": cfg.to_json(),
        "class_names": json.dumps(list(cfg.class_names)),
        "sha256": digest,
        "name": str(meta.get("name", cfg.name)),
        "version": str(meta.get("version", xscreen_version)),
        "metadata": json.dumps(meta, sort_keys=True, default=str),
    }
    if operating_point is not None:
        header["operating_point"] = json.dumps(check_operating_point(operating_point), sort_keys=True)
    _write(tensors, header, Path(path))
    return digest


def _write(tensors: dict[str, Tensor], header: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)


def set_operating_point(src: str | Path, dst: str | Path, operating_point: dict) -> dict:
    """Copy weights ``src`` to ``dst`` (may be the same file) with a new operating point; tensors, their
    dtype and sha256 unchanged (verified). Returns the stored operating point."""
    src = Path(src)
    header = read_header(src)
    op = check_operating_point(operating_point)
    try:
        tensors = load_file(str(src))
    except Exception as exc:
        raise WeightsError(f"{src}: cannot read tensors, file truncated or corrupted ({exc})") from None
    if tensors_sha256(tensors) != header.get("sha256"):
        raise WeightsError(f"{src}: sha256 mismatch: the file is corrupted or was modified")
    _write(tensors, {**header, "operating_point": json.dumps(op, sort_keys=True)}, Path(dst))
    return op


def read_header(path: str | Path) -> dict[str, str]:
    """The metadata dict of a safetensors file (WeightsError if it is not one)."""
    path = Path(path)
    denied = permission_denied(path)
    if denied:
        raise WeightsError(denied)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except Exception as exc:  # safetensors raises SafetensorError / OSError on a broken header
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    if not meta or meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: safetensors file without xscreen detector metadata")
    return meta


def load_weights(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    expected_config: DetectorConfig | str | None = None,
):
    """Load a detector (eval mode, fp32) -> (ATSSDetector, WeightsInfo).

    Verifies the sha256 of the tensors, the format version and, when ``expected_config`` is given,
    that its architecture fields (depth, channels, class names, LA mode, ...) equal the stored ones.
    Test-time settings (thresholds, sizes) of ``expected_config`` then replace the stored ones.
    """
    path = Path(path)
    meta = read_header(path)
    version, cfg = _stored_config(path, meta)
    tensors, digest = _verified_tensors(path, meta)
    if expected_config is not None:
        cfg = _test_time_config(path, cfg, expected_config)
    model = ATSSDetector(cfg)
    _load_state(model, tensors, path)
    model.to(device).eval()
    try:
        extra = json.loads(meta.get("metadata", "{}"))
    except json.JSONDecodeError:
        extra = {}
    info = WeightsInfo(
        config=cfg,
        sha256=digest,
        format_version=version,
        name=meta.get("name", cfg.name),
        version=meta.get("version", ""),
        metadata=extra,
        operating_point=operating_point_of(meta, str(path)),
    )
    return model, info


def _stored_config(path: Path, meta: dict[str, str]) -> tuple[int, DetectorConfig]:
    """The header's format version (only FORMAT_VERSION is read) and stored config."""
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = 0
    if version != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported weights format version {meta.get('format_version')!r}")
    try:
        cfg = config_from_json(meta["config"], source=f"{path} (stored config)")
    except (KeyError, ConfigError) as exc:
        raise WeightsError(f"{path}: stored config is missing or invalid ({exc})") from None
    return version, cfg


def _verified_tensors(path: Path, meta: dict[str, str]) -> tuple[dict[str, Tensor], str]:
    """The file's tensors and their sha256, which must equal the header's."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read tensors, file truncated or corrupted ({exc})") from None
    digest = tensors_sha256(tensors)
    if digest != meta.get("sha256"):
        raise WeightsError(
            f"{path}: sha256 mismatch (header {meta.get('sha256', '?')[:12]}..., tensors {digest[:12]}...): "
            "the file is corrupted or was modified"
        )
    return tensors, digest


def _test_time_config(
    path: Path, cfg: DetectorConfig, expected_config: DetectorConfig | str
) -> DetectorConfig:
    """``expected_config``, after checking that its architecture equals the stored ``cfg``'s."""
    try:
        expected = load_config(expected_config)
    except ConfigError as exc:
        raise WeightsError(str(exc)) from None
    diff = cfg.architecture_diff(expected)
    if diff:
        parts = "; ".join(f"{k}: weights have {a!r}, expected {b!r}" for k, (a, b) in diff.items())
        raise WeightsError(f"{path}: weights do not match the expected config {expected.name!r}: {parts}")
    if expected != cfg:
        log.info("using test-time settings of config %s with weights %s", expected.name, path)
    return expected


def _load_state(model: torch.nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Load ``tensors`` into ``model``, WeightsError naming missing, unexpected or misshapen ones."""
    name = model.cfg.name
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: tensors do not fit {name}: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )
    bad = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if tensors[k].shape != v.shape
    ]
    if bad:
        raise WeightsError(f"{path}: tensor shapes do not fit {name}: {bad[:3]}")
    model.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own}, strict=True)
