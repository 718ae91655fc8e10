"""What running the detector needs to know (model file, backend, device, scan limits, threshold), read from
``XSCREEN_*`` variables and flags: ``xscreen detect`` reads these alone, the service's ``Settings`` adds
its own to them."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from xscreen.errors import XscreenError, permission_denied
from xscreen.model.config import LEGACY_SCORE_THRESHOLD

BUNDLED_WEIGHTS_NAME = "xscreen-small-lacls.safetensors"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_SUFFIX = {"torch": ".safetensors", "onnxruntime": ".onnx"}


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

    # -- models directory (docs/service.md "Models") --------------------------------------------------
    models_dir: Path | None = Field(
        None, description="folder of versioned model files <name>.safetensors / <name>.onnx"
    )
    model_name: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="with models_dir: the file stem of the model to serve"
    )
    model_selection_file: Path | None = Field(
        None,
        description='JSON {"name": ..., "sha256": ...}: read at start and on SIGHUP, written by '
        "POST /admin/model; wins over model_name/weights_sha256 when it exists",
    )

    @field_validator("device", "backend", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _select_model(self) -> InferenceSettings:
        self._resolve_model()
        if self.backend == "onnxruntime" and self.onnx_path is None:
            raise ValueError("backend 'onnxruntime' needs XSCREEN_ONNX_PATH (the exported .onnx file)")
        return self

    def _resolve_model(self) -> None:
        """With a models directory, point ``weights`` (or ``onnx_path``) at the selected model's file."""
        if self.models_dir is None:
            if self.model_name is not None or self.model_selection_file is not None:
                raise ValueError(
                    "XSCREEN_MODEL_NAME and XSCREEN_MODEL_SELECTION_FILE need XSCREEN_MODELS_DIR"
                )
            return
        name, sha256 = self.model_name, self.weights_sha256
        chosen = read_selection(self.model_selection_file) if self.model_selection_file else None
        if chosen is not None:
            name, sha256 = chosen
        if name is None:
            raise ValueError(
                "XSCREEN_MODELS_DIR needs XSCREEN_MODEL_NAME (or a selection file) naming the model to serve"
            )
        path = model_file(self.models_dir, name, self.backend)
        self.model_name, self.weights_sha256 = name, sha256
        if self.backend == "onnxruntime":
            self.onnx_path = path
        else:
            self.weights = path


def available_models(models_dir: Path, backend: str) -> list[str]:
    """Model names (file stems) in ``models_dir`` that ``backend`` can load, sorted."""
    suffix = MODEL_SUFFIX.get(backend, ".safetensors")
    try:
        return sorted(p.stem for p in models_dir.iterdir() if p.suffix == suffix and p.is_file())
    except OSError as exc:
        raise ValueError(f"cannot list models directory {models_dir}: {exc.strerror or exc}") from None


class ModelFileUnreadable(ValueError):
    """A model file that exists but that this process may not read (the message says "permission denied")."""


def model_file(models_dir: Path, name: str, backend: str) -> Path:
    """``<models_dir>/<name><suffix>``; ValueError naming the models there when it does not exist,
    ModelFileUnreadable when this process may not read it."""
    if not re.match(MODEL_NAME_PATTERN, name):
        raise ValueError(f"invalid model name {name!r} (letters, digits, '.', '_', '-')")
    path = models_dir / f"{name}{MODEL_SUFFIX.get(backend, '.safetensors')}"
    denied = permission_denied(path)
    if denied:
        raise ModelFileUnreadable(denied)
    if not path.is_file():
        known = available_models(models_dir, backend)
        raise ValueError(
            f"no model named {name!r} in {models_dir} for backend {backend} "
            f"(available: {', '.join(known) if known else 'none'})"
        )
    return path


def read_selection(path: Path) -> tuple[str, str] | None:
    """(name, sha256) from a selection file ``{"name": ..., "sha256": ...}``; None when it does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read model selection file {path}: {exc}") from None
    name, sha256 = (data.get("name"), data.get("sha256")) if isinstance(data, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(sha256, str) or not re.match(r"^[0-9a-fA-F]{64}$", sha256):
        raise ValueError(f'model selection file {path} must hold {{"name": "<model>", "sha256": "<64 hex>"}}')
    return name, sha256.lower()


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
