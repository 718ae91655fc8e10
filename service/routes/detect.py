"""``POST /detect`` (JSON detections) and ``POST /render`` (pseudo-colour PNG with boxes) on a scan pair."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from xscreen.service.batching import (
    BatcherStoppedError,
    BatchFailedError,
    DeadlineExceededError,
    QueueFullError,
)
from xscreen.service.errors import ApiError
from xscreen.service.response import (
    detections_from_output,
    effective_threshold,
    model_summary,
    render_response_png,
)
from xscreen.service.scan_input import PreparedScan, prepare_scan
from xscreen.service.schemas import (
    SCAN_ID_PATTERN,
    DetectResponse,
    ErrorResponse,
    ImageSize,
)
from xscreen.service.state import ServiceDep, ServiceState

router = APIRouter(tags=["detection"])

_PART_HELP = (
    "energy image: 16-bit greyscale PNG, 16-bit TIFF or .npy (uint16 [H, W]); or, with 'width' and "
    "'height', headerless little-endian uint16 pixels, row-major"
)
HighPart = Annotated[UploadFile, File(description="high-energy " + _PART_HELP)]
LowPart = Annotated[UploadFile, File(description="low-energy " + _PART_HELP)]
WidthField = Annotated[int | None, Form(ge=2, le=1_000_000, description="raw buffers only: pixels per row")]
HeightField = Annotated[int | None, Form(ge=2, le=1_000_000, description="raw buffers only: rows")]
ScanIdField = Annotated[
    str | None, Form(pattern=SCAN_ID_PATTERN, description="echoed in the response; generated if absent")
]
ThresholdField = Annotated[
    float | None,
    Form(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="minimum score returned (default: XSCREEN_SCORE_THRESHOLD if set, else the model's own)",
    ),
]

_ERRORS = {
    400: {"model": ErrorResponse, "description": "bad scan or parameter"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "too many bytes or pixels"},
    415: {"model": ErrorResponse, "description": "not multipart/form-data, or an unsupported file format"},
    422: {"model": ErrorResponse, "description": "missing part or invalid form field"},
    503: {"model": ErrorResponse, "description": "queue full (see Retry-After) or not ready"},
    504: {"model": ErrorResponse, "description": "no result before the request deadline"},
}


def _retry_after(service: ServiceState) -> str:
    return str(max(1, int(np.ceil(service.settings.request_timeout_s / 10))))


async def _run_detection(
    service: ServiceState,
    request: Request,
    high: UploadFile,
    low: UploadFile,
    width: int | None,
    height: int | None,
    scan_id: str | None,
    score_threshold: float | None,
) -> tuple[PreparedScan, DetectResponse]:
    t_start = time.perf_counter()
    deadline = time.monotonic() + service.settings.request_timeout_s
    scan_id = scan_id or uuid.uuid4().hex
    request.state.scan_id = scan_id
    batcher, backend = service.batcher, service.backend
    if batcher is None or backend is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "5"})
    if batcher.full():  # cheap early refusal, before decoding anything
        service.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(503, "queue_full", "too many scans waiting", {"Retry-After": _retry_after(service)})
    with batcher.incoming():
        high_bytes, low_bytes = await high.read(), await low.read()
        prepared = await asyncio.to_thread(
            prepare_scan,
            high_bytes,
            low_bytes,
            width=width,
            height=height,
            max_pixels=service.settings.max_pixels,
            formats=service.settings.formats,
        )
    service.metrics.stage_seconds.labels(stage="decode").observe(prepared.decode_seconds)
    service.metrics.stage_seconds.labels(stage="convert").observe(prepared.convert_seconds)
    try:
        result = await batcher.submit(prepared.image, deadline)
    except QueueFullError as exc:
        service.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": _retry_after(service)}) from None
    except DeadlineExceededError as exc:
        service.metrics.rejected.labels(reason="deadline").inc()
        raise ApiError(504, "timeout", f"{exc} ({service.settings.request_timeout_s:g} s)") from None
    except BatcherStoppedError as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None
    except BatchFailedError as exc:
        raise ApiError(500, "inference_failed", str(exc)) from None

    info = backend.info
    threshold = effective_threshold(score_threshold, service.settings.score_threshold, info)
    detections = detections_from_output(result.output, info, service.class_ids, threshold)
    for d in detections:
        service.metrics.detections.labels(class_name=d.class_name).inc()
    timings = {
        "decode": prepared.decode_seconds,
        "convert": prepared.convert_seconds,
        "queue_wait": result.queue_wait,
        **result.stage_seconds,
        "inference": result.inference_seconds,
        "total": time.perf_counter() - t_start,
    }
    timings = {k: round(v, 6) for k, v in timings.items()}
    width_px, height_px = prepared.size
    response = DetectResponse(
        scan_id=scan_id,
        model=model_summary(info, service.settings.backend, backend.device),
        image=ImageSize(width=width_px, height=height_px),
        score_threshold=threshold,
        detections=detections,
        batch_size=result.batch_size,
        timings=timings,
    )
    request.state.timings = timings
    request.state.detections = len(detections)
    return prepared, response


@router.post(
    "/detect", response_model=DetectResponse, responses=_ERRORS, summary="Detect threats in a raw scan"
)
async def detect(
    request: Request,
    service: ServiceDep,
    high: HighPart,
    low: LowPart,
    width: WidthField = None,
    height: HeightField = None,
    scan_id: ScanIdField = None,
    score_threshold: ThresholdField = None,
) -> DetectResponse:
    _, response = await _run_detection(service, request, high, low, width, height, scan_id, score_threshold)
    return response


@router.post(
    "/render",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "pseudo-colour PNG with boxes"}, **_ERRORS},
    summary="Pseudo-colour picture of the scan with the detections drawn on it",
)
async def render(
    request: Request,
    service: ServiceDep,
    high: HighPart,
    low: LowPart,
    width: WidthField = None,
    height: HeightField = None,
    scan_id: ScanIdField = None,
    score_threshold: ThresholdField = None,
) -> Response:
    prepared, response = await _run_detection(
        service, request, high, low, width, height, scan_id, score_threshold
    )
    png = await asyncio.to_thread(render_response_png, prepared, response)
    return Response(png, media_type="image/png", headers={"X-Scan-Id": response.scan_id})
