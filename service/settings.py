"""Service configuration: one pydantic-settings ``Settings`` read from ``XSCREEN_*`` variables and flags."""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xscreen.errors import XscreenError

BUNDLED_WEIGHTS_NAME = "xscreen-small-lacls.safetensors"
MIN_API_KEY_LENGTH = 16


class SettingsError(XscreenError):
    """A setting (flag or XSCREEN_* variable) has a value the service cannot run with."""


def bundled_weights_path() -> Path:
    """The demo weights shipped inside the installed ``model`` package (small_lacls, synthetic scans).

    Located through the import system without importing ``model`` (which would pull in torch).
    """
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        return Path("model") / "weights" / BUNDLED_WEIGHTS_NAME
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / BUNDLED_WEIGHTS_NAME


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_keys(value: Any) -> Any:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read API keys file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"API keys file {path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Settings(BaseSettings):
    """Everything the service reads at start. Each field is also ``XSCREEN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="XSCREEN_", extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", min_length=1, description="bind address; non-loopback needs API keys")
    port: int = Field(8000, ge=1, le=65535)
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
    max_batch_size: int = Field(4, ge=1, le=64)
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    queue_size: int = Field(64, ge=1, le=100_000, description="scans waiting for the model; full -> 503")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="per-request deadline -> 504")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="whole request body limit")
    max_pixels: int = Field(25_000_000, ge=4, description="per image (width x height) limit")
    formats: Annotated[list[Literal["png", "tiff", "npy", "raw"]], NoDecode] = Field(
        default_factory=lambda: ["png", "tiff", "npy", "raw"],
        description="accepted scan encodings (comma-separated); others are answered 415",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="comma-separated; never logged"
    )
    api_keys_file: Path | None = Field(None, description="one key per line ('#' comments)")
    protect_metrics: bool = Field(False, description="require an API key for /metrics")
    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="minimum score returned when a request sends none; unset: the model's own threshold "
        "(recorded in its weights or export, 0.3 for files made before)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    warmup: bool = Field(True, description="run one inference before /readyz says ready")
    graceful_timeout_s: float = Field(30.0, gt=0, le=3600, description="wait for in-flight requests on stop")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return _split_keys(value)

    @field_validator("formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: Any) -> Any:
        value = _split_keys(value)
        if isinstance(value, list):
            value = [v.lower() if isinstance(v, str) else v for v in value]
            if not value:
                raise ValueError("at least one format must be accepted (png, tiff, npy, raw)")
        return value

    @field_validator("log_level", "device", "backend", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        keys = self.all_api_keys()
        short = [k for k in keys if len(k) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"API keys must be at least {MIN_API_KEY_LENGTH} characters ({len(short)} too short)"
            )
        if not keys and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on non-loopback host {self.host!r} without an API key: "
                "set XSCREEN_API_KEYS or XSCREEN_API_KEYS_FILE"
            )
        if self.backend == "onnxruntime" and self.onnx_path is None:
            raise ValueError("backend 'onnxruntime' needs XSCREEN_ONNX_PATH (the exported .onnx file)")
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from XSCREEN_API_KEYS plus those in XSCREEN_API_KEYS_FILE (read at validation)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            keys += read_keys_file(self.api_keys_file)
        return keys


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"XSCREEN_{loc.upper()}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with ``overrides`` (CLI flags) on top; one clear error on bad values."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {_describe(exc)}") from None
