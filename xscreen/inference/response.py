"""The detection answer as a pydantic model: the body of ``POST /detect``, ``xscreen detect --json`` and
the source of a DICOS TDR (the service's OpenAPI document names these models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Box(BaseModel):
    """Axis-aligned box, x1 y1 x2 y2 in the scan's own pixels (origin top-left, x to the right)."""

    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    class_id: int = Field(description="the dataset's category id (CLCXray ids 1..12)")
    class_name: str = Field(examples=["knife"])
    group: Literal["cutter", "liquid container", "other"]
    score: float = Field(ge=0.0, le=1.0)
    box: Box


class ModelSummary(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 recorded in the weights file")
    backend: str = Field(examples=["torch"])
    device: str = Field(examples=["cpu"])
    precision: str = Field(
        "fp32",
        description="numeric precision of the network (int8: a quantised ONNX export)",
        examples=["fp32"],
    )


class ImageSize(BaseModel):
    width: int
    height: int


class DetectResponse(BaseModel):
    scan_id: str = Field(description="the request's scan_id, or a generated one")
    model: ModelSummary
    image: ImageSize
    score_threshold: float
    detections: list[Detection] = Field(description="sorted by score, highest first")
    batch_size: int = Field(description="scans in the model batch this scan was part of")
    timings: dict[str, float] = Field(
        description="seconds per stage: decode, convert, queue_wait, the model's stages (preprocess, "
        "backbone_fpn, head_first, la_grad, head_second, postprocess; per batch), inference, total"
    )
