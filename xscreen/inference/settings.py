"""What running the detector needs to know (model file, backend, device, scan limits, threshold), read from
``XSCREEN_*`` variables and flags: ``xscreen detect`` reads these alone, the service's ``Settings`` adds
its own to them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from xscreen.errors import XscreenError
from xscreen.model.config import LEGACY_SCORE_THRESHOLD

BUNDLED_WEIGHTS_NAME = "xscreen-small-lacls.safetensors"


class SettingsError(XscreenError):
    """A setting (flag or XSCREEN_* variable) has a value the service or the CLI cannot run with."""


def bundled_weights_path() -> Path:
    """The demo weights shipped inside the installed ``xscreen.model`` package (small_lacls, synthetic scans).

    Located through the import system without importing ``model`` (which would pull in torch).
    """
    spec = importlib.util.find_spec("xscreen.model")
    if spec is None or not spec.submodule_search_locations:
        return Path("model") / "weights" / BUNDLED_WEIGHTS_NAME
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / BUNDLED_WEIGHTS_NAME


class InferenceSettings(BaseSettings):
    """The settings of the detection pipeline. Each field is also ``XSCREEN_<FIELD>`` in the environment;
    variables of the service's other settings are ignored here."""

    model_config = SettingsConfigDict(env_prefix="XSCREEN_", extra="ignore", validate_default=True)

    weights: Path = Field(default_factory=bundled_weights_path, description="safetensors weights file")
    weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="if set, the weights' sha256 must equal this"
    )
    device: Literal["auto", "cuda", "cpu"] = "auto"
    backend: Literal["torch", "onnxruntime"] = "torch"
    onnx_path: Path | None = Field(None, description="ONNX model file for backend=onnxruntime")
    la_bf16: bool = Field(
        False,
        description="backend=torch: run LA's gradient passes under bf16 autocast (faster on CPUs with "
        "bf16 units; scores differ from fp32 by rounding only, see docs/model.md)",
    )
    ort_graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level (backend=onnxruntime)"
    )
    ort_intra_op_threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime threads, 0 = one per core")
    max_pixels: int = Field(25_000_000, ge=4, description="per image (width x height) limit")
    check_energy_order: bool = Field(
        True,
        description="refuse a pair whose high-energy image is darker than its low-energy one where objects "
        "attenuate (400 energies_swapped; docs/method.md 1a); off for a scanner with another convention",
    )
    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="minimum score returned when a request sends none; unset: the model's own threshold "
        f"(recorded in its weights or export, {LEGACY_SCORE_THRESHOLD:g} for files made before)",
    )

    @field_validator("device", "backend", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def describe_validation(exc: ValidationError) -> str:
    """A settings validation error as one line naming each variable (``XSCREEN_<FIELD>: why``)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"XSCREEN_{loc.upper()}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_inference_settings(**overrides: Any) -> InferenceSettings:
    """Settings from the environment with ``overrides`` (CLI flags, None: not given) on top."""
    try:
        return InferenceSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {describe_validation(exc)}") from None
