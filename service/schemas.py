"""Request/response bodies of the HTTP API: pydantic models, so the OpenAPI document is the contract.

The detection answer (``DetectResponse`` and its parts) is ``xscreen.inference.response``, shared with
``xscreen detect``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from xscreen.inference.settings import MODEL_NAME_PATTERN
from xscreen.service.errors import ErrorCode

# scan ids are echoed into logs and headers: a conservative alphabet keeps both clean.
SCAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class ErrorResponse(BaseModel):
    error: ErrorCode = Field(description="short machine-readable code", examples=["scan_size_mismatch"])
    detail: str = Field(description="what was wrong, for a person")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    detail: str


class ModelClass(BaseModel):
    class_id: int = Field(description="the dataset's category id, as in detections")
    class_name: str
    group: Literal["cutter", "liquid container", "other"]


class InputLimits(BaseModel):
    max_pixels: int = Field(description="pixels per energy image (width x height)")
    max_upload_bytes: int = Field(description="whole request body")
    formats: list[str] = Field(
        description="accepted scan encodings", examples=[["png", "tiff", "npy", "raw"]]
    )
    min_side: int = Field(2, description="smallest width or height accepted")
    max_raw_side: int = Field(1_000_000, description="largest 'width' / 'height' of a raw buffer")


class ModelResponse(BaseModel):
    """``GET /model``: what the service is serving now."""

    name: str = Field(description="name recorded in the weights file")
    version: str
    sha256: str = Field(description="sha256 of the weights (recorded in the file, checked on load)")
    model_name: str | None = Field(description="the file's name in XSCREEN_MODELS_DIR (stem), if used")
    file: str = Field(description="file name of the weights or ONNX export")
    backend: str
    device: str
    precision: str
    score_threshold: float = Field(
        description="default minimum score of returned detections: XSCREEN_SCORE_THRESHOLD if set, "
        "else the model's own operating threshold"
    )
    classes: list[ModelClass]
    limits: InputLimits
    config: dict[str, Any] = Field(description="the detector config stored with the weights")
    loaded_at: str = Field(description="UTC time the model started serving (ISO 8601)")


class ModelSwitchRequest(BaseModel):
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="file stem in XSCREEN_MODELS_DIR")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the weights' sha256 the file must have")


class ModelSwitchResponse(BaseModel):
    result: Literal["switched", "unchanged"]
    previous_sha256: str
    model: ModelResponse
    persisted: bool = Field(description="written to XSCREEN_MODEL_SELECTION_FILE (kept across restarts)")
