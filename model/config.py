"""Typed detector configuration (one JSON file per variant in model/configs/) and its loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xscreen.errors import XscreenError
from xscreen.model.classes import CLASS_NAMES

log = logging.getLogger(__name__)

# Operating score threshold of weights and exports that record none (made before training picked one on
# validation data), and of a model that the threshold pick or an import cannot base on data: the
# service's long-standing default. Not the candidate filter (DetectorConfig.candidate_score_thresh).
LEGACY_SCORE_THRESHOLD = 0.3
REG_CONF_TOPK = 4  # earliest released reg_conf: top-4 bin probabilities per side (docs/method.md §7.2)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Fields that change the network's tensors or the meaning of its outputs: weights saved under one
# value cannot be used under another (model.weights checks them). The others are test-time or
# training-schedule settings that may differ between the saved weights and the caller's config.
ARCHITECTURE_FIELDS = (
    "depth",
    "backbone_norm",
    "fpn_channels",
    "stacked_convs",
    "class_names",
    "la_mode",
    "la_coeffs",
    "reg_tower_repeat",
    "reg_max",
    "head_style",
    "reg_conf_stats",
    "reg_conf_channels",
    "fpn_p7_relu",
)


class ConfigError(XscreenError):
    """A detector config that cannot be found, parsed or validated."""


class DetectorConfig(BaseModel):
    """One detector variant: architecture, Label-aware settings, test thresholds and schedule defaults.

    Numbers follow docs/method.md §2-4 (the authors' mmdetection ATSS config); unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    # --- architecture (docs/method.md §2) ---
    depth: Literal[18, 34, 50, 101] = 50
    # >= 64: GroupNorm(32) on a 1x1 P7 map needs at least 2 channels per group
    fpn_channels: int = Field(256, ge=64)
    stacked_convs: int = Field(4, ge=1, le=8)
    class_names: tuple[str, ...] = CLASS_NAMES
    frozen_stages: int = Field(1, ge=-1, le=4)  # mmdet frozen_stages=1: stem + layer1 frozen
    # frozen_bn: docs/method.md §2 (ImageNet-initialised). group_norm: trainable GroupNorm(32) for training
    # from random initialisation (the synthetic-scan models; docs/la_experiment.md).
    backbone_norm: Literal["frozen_bn", "group_norm"] = "frozen_bn"
    # frozen_bn only. False: BatchNorm affine parameters fixed too (torchvision FrozenBatchNorm2d, the
    # behaviour of every config before the release-parity work). True: the authors' norm_eval=True with
    # requires_grad=True: statistics fixed, weight and bias of the stages after frozen_stages train
    # (docs/method.md §7.8). The state dict is the same either way.
    bn_affine_trainable: bool = False
    # P7 = conv(relu(P6)) (torchvision LastLevelP6P7, True) or conv(P6) (mmdetection FPN with
    # relu_before_extra_convs=False, the authors' config; docs/method.md §7.7)
    fpn_p7_relu: bool = True
    # "atss": delta-xywh regression (or GFL bins for LAreg) with a centerness conv (docs/method.md §2-4).
    # "released": the authors' released heads (docs/method.md §7.1-7.6): 4 x (reg_max + 1) bin regression
    # for every la_mode, the reg_conf quality branch instead of centerness, loss_d, and the released
    # LAreg rules (sigmoid per bin, bin 0 at background).
    head_style: Literal["atss", "released"] = "atss"
    # released reg_conf input per side: "max_mean" = max - mean of the bin softmax (final version,
    # 4 channels); "topk_mean" = top-4 probabilities and their mean (earliest version, 20 channels)
    reg_conf_stats: Literal["max_mean", "topk_mean"] = "max_mean"
    reg_conf_channels: int = Field(16, ge=1)  # hidden 1x1 conv width: LAcls final 16, LAreg / early 64
    # released quality target: ATSS centerness (final) or the IoU of the predicted box (earliest version)
    quality_target: Literal["centerness", "iou"] = "centerness"
    # --- Label-aware mechanism (docs/method.md §3-4) ---
    la_mode: Literal["none", "cls", "reg"] = "none"
    # x_new = a*x + b*w1*x - c*w2*x (Eq. 7). LAreg has no "misleading" term: (a, b, c) = (0.5, 1, 0).
    la_coeffs: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Paper Sec. IV-A: "the regression branch repeats twice in the second prediction".
    reg_tower_repeat: int = Field(2, ge=1, le=3)
    reg_max: int = Field(16, ge=1)  # LAreg: 16 intervals -> 17 bin values 0..16 (docs/method.md §4)
    # --- input geometry ---
    min_size: int = Field(800, ge=32)
    max_size: int = Field(1333, ge=32)
    # --- test (docs/method.md §2) ---
    # candidate filter before NMS: class scores at or below it never reach NMS. Not the operating
    # threshold of the answers (``score_threshold`` in weights, the service and the CLI).
    candidate_score_thresh: float = Field(0.05, ge=0.0, lt=1.0)
    nms_pre: int = Field(1000, ge=1)
    nms_iou: float = Field(0.6, gt=0.0, le=1.0)
    max_dets: int = Field(100, ge=1)
    # --- assigner / loss ---
    atss_topk: int = Field(9, ge=1)
    focal_alpha: float = Field(0.25, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    giou_weight: float = Field(2.0, ge=0.0)
    dfl_weight: float = Field(0.25, ge=0.0)  # LAreg distribution focal loss (GFL default)
    # --- schedule defaults (paper Sec. V-A), read by training ---
    lr: float = Field(0.01, gt=0.0)
    lr_batch_size: int = Field(8, ge=1)  # lr is for this total batch size (linear scaling rule)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_iters: int = Field(500, ge=0)
    warmup_ratio: float = Field(0.001, gt=0.0, le=1.0)
    epochs: int = Field(12, ge=1)
    lr_steps: tuple[int, ...] = (8, 11)
    # max gradient L2 norm; None: no clipping (the authors' schedule, docs/method.md §7.8). 35 is what
    # xscreen's configs have always used (not an mmdetection ATSS default).
    grad_clip: float | None = Field(35.0, gt=0.0)

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("must name at least one class")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate class names in {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DetectorConfig:
        if self.fpn_channels % 32:
            raise ValueError(f"fpn_channels={self.fpn_channels} must be a multiple of 32 (GroupNorm(32))")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} is smaller than min_size={self.min_size}")
        if self.la_reg and self.la_coeffs[2] != 0.0:
            raise ValueError("la_coeffs: LAreg has no misleading-label term, c must be 0")
        if self.bn_affine_trainable and self.backbone_norm != "frozen_bn":
            raise ValueError("bn_affine_trainable applies to backbone_norm 'frozen_bn' only")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s > self.epochs for s in self.lr_steps):
            raise ValueError(f"lr_steps={list(self.lr_steps)} must be ascending and <= epochs={self.epochs}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def uses_la(self) -> bool:
        """The head runs the Label-aware loop (LAcls or LAreg), not plain ATSS."""
        return self.la_mode != "none"

    @property
    def la_cls(self) -> bool:
        """LAcls: weights from the classification branch, label and misleading label (docs/method.md §3)."""
        return self.la_mode == "cls"

    @property
    def la_reg(self) -> bool:
        """LAreg: weights from the regression branch's bin distributions (docs/method.md §4)."""
        return self.la_mode == "reg"

    @property
    def released(self) -> bool:
        """The authors' released head (docs/method.md §7): bins, reg_conf quality branch, loss_d."""
        return self.head_style == "released"

    @property
    def bin_regression(self) -> bool:
        """Regression as 4 x (reg_max + 1) distance bins (LAreg, or any released head)."""
        return self.la_reg or self.released

    @property
    def reg_channels(self) -> int:
        """Channels of the regression output: 4 deltas, or 4 sides x (reg_max + 1) bin logits."""
        return 4 * (self.reg_max + 1) if self.bin_regression else 4

    @property
    def reg_conf_inputs(self) -> int:
        """Input channels of the released reg_conf branch: 4 (max - mean) or 4 x 5 (top-4 and mean)."""
        return 4 if self.reg_conf_stats == "max_mean" else 4 * (REG_CONF_TOPK + 1)

    @property
    def skip_label_grad(self) -> bool:
        """LAcls with b = 0: the label gradient is multiplied by 0 and skipped (docs/method.md §7.5)."""
        return self.la_cls and self.la_coeffs[1] == 0.0

    def with_overrides(self, **changes: Any) -> DetectorConfig:
        """A validated copy with some fields changed (unknown fields or bad values raise ConfigError)."""
        return _validate({**self.model_dump(), **changes}, source="overrides")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def architecture_diff(self, other: DetectorConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for architecture fields that differ."""
        return {
            f: (getattr(self, f), getattr(other, f))
            for f in ARCHITECTURE_FIELDS
            if getattr(self, f) != getattr(other, f)
        }


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)


# Keys renamed since files were written with them: old name -> current name. A file with an old key
# loads, with one log line naming the new key.
RENAMED_KEYS = {"score_thresh": "candidate_score_thresh"}


def _renamed(data: dict, source: str) -> dict:
    """``data`` with renamed keys under their current names (a ConfigError when both are present)."""
    old = [k for k in RENAMED_KEYS if k in data]
    if not old:
        return data
    data = dict(data)
    for key in old:
        new = RENAMED_KEYS[key]
        if new in data:
            raise ConfigError(f"{source}: both {key!r} and its new name {new!r} are set; keep {new!r}")
        data[new] = data.pop(key)
        log.warning("%s: config key %r is deprecated, read as %r (its new name)", source, key, new)
    return data


def _validate(data: Any, source: str) -> DetectorConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a detector config must be a JSON object, got {type(data).__name__}")
    data = _renamed(data, source)
    try:
        return DetectorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_errors(exc)}") from None


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_from_dict(data: dict, source: str = "config") -> DetectorConfig:
    return _validate(data, source)


def config_from_json(text: str, source: str = "config") -> DetectorConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from None
    return _validate(data, source)


def load_config(name_or_path: str | Path | DetectorConfig) -> DetectorConfig:
    """A bundled variant by name (``atss_lacls_r50``) or a JSON file path -> DetectorConfig."""
    if isinstance(name_or_path, DetectorConfig):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and (CONFIG_DIR / f"{text}.json").is_file():
        path = CONFIG_DIR / f"{text}.json"
    if not path.is_file():
        raise ConfigError(
            f"no detector config {text!r}: not a file and not one of {', '.join(available_configs())}"
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    return config_from_json(raw, source=str(path))
