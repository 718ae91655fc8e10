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


ALARM_HELP = (
    "true when any detection reaches score_threshold (the request's, else XSCREEN_SCORE_THRESHOLD, else the "
    "model's operating threshold): the lane's alarm decision, as in the TDR's Alarm Decision and the audit"
)


class DetectResponse(BaseModel):
    scan_id: str = Field(description="the request's scan_id, or a generated one")
    model: ModelSummary
    image: ImageSize
    score_threshold: float
    alarm: bool = Field(description=ALARM_HELP)
    detections: list[Detection] = Field(description="sorted by score, highest first")
    batch_size: int = Field(description="scans in the model batch this scan was part of")
    timings: dict[str, float] = Field(
        description="seconds per stage: decode, convert, queue_wait, the model's stages (preprocess, "
        "backbone_fpn, head_first, la_grad, head_second, postprocess; per batch), inference, total"
    )

    @property
    def width(self) -> int:
        """``image.width`` (a shorthand that xscreen.client's answers have always had)."""
        return self.image.width

    @property
    def height(self) -> int:
        """``image.height``."""
        return self.image.height


class ViewSource(BaseModel):
    """Where a view of a bag came from: its parts' position in the request, and for DICOS DX its images."""

    part: int = Field(description="0-based: the view is the part-th 'high' and the part-th 'low' of the form")
    series_uid: str | None = Field(None, description="DICOS DX: the view's Series Instance UID (0020,000E)")
    high_instance_uid: str | None = Field(None, description="DICOS DX: the high-energy SOP Instance UID")
    low_instance_uid: str | None = Field(None, description="DICOS DX: the low-energy SOP Instance UID")


class ViewResult(BaseModel):
    view: int = Field(description="0-based view index, in the order the views were sent")
    source: ViewSource
    image: ImageSize
    alarm: bool = Field(description="this view alone would alarm")
    detections: list[Detection] = Field(description="this view's detections, sorted by score, highest first")


class BagResponse(BaseModel):
    """The answer for a bag of several views (``POST /detect`` with repeated high/low parts). The views
    are detected independently, in one model batch; the bag alarms when any view does."""

    scan_id: str = Field(description="the request's scan_id, or a generated one: the bag's id")
    model: ModelSummary
    score_threshold: float
    alarm: bool = Field(description=ALARM_HELP + "; for a bag: any view's detection")
    views: list[ViewResult]
    batch_size: int = Field(description="scans (views) in the model batch this bag was part of")
    timings: dict[str, float] = Field(
        description="seconds per stage for the whole bag: decode and convert (summed over views), "
        "queue_wait, the model's stages, inference (one batch), total"
    )
