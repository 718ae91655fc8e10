"""``POST /detect`` (JSON detections) and ``POST /render`` (pseudo-colour PNG with boxes) on a scan pair."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from xscreen.scans.peek import declared_pixels
from xscreen.service.audit import AuditError, audit_record
from xscreen.service.auth import require_api_key
from xscreen.service.batching import (
    BatcherStoppedError,
    BatchFailedError,
    DeadlineExceededError,
    QueueFullError,
)
from xscreen.service.budget import BudgetExhaustedError, Lease, ScanAdmission
from xscreen.service.errors import ApiError
from xscreen.service.models import class_ids
from xscreen.service.response import (
    detections_from_output,
    effective_threshold,
    model_summary,
    render_response_png,
)
from xscreen.service.scan_input import PreparedScan, ScanExpiredError, prepare_scan
from xscreen.service.schemas import (
    SCAN_ID_PATTERN,
    DetectResponse,
    ErrorResponse,
    ImageSize,
)
from xscreen.service.state import ServiceDep, ServiceState
from xscreen.service.tdr import DICOM_MEDIA_TYPE, tdr_from_response, wants_dicom

log = logging.getLogger("xscreen.service")

# require_api_key declares the Bearer scheme in OpenAPI; the request guard has already checked the key.
router = APIRouter(tags=["detection"], dependencies=[Depends(require_api_key)])

_PART_HELP = (
    "energy image: 16-bit greyscale PNG, 16-bit TIFF, .npy (uint16 [H, W]) or DICOS DX (application/dicom "
    "or a DICM preamble; both parts then DX); or, with 'width' and 'height', headerless little-endian "
    "uint16 pixels, row-major"
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

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before sending the scan again",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_ERRORS = {
    400: {"model": ErrorResponse, "description": "bad scan or parameter"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "too many bytes or pixels"},
    415: {"model": ErrorResponse, "description": "not multipart/form-data, or an unsupported file format"},
    422: {"model": ErrorResponse, "description": "missing part or invalid form field"},
    500: {"model": ErrorResponse, "description": "inference failed on the batch holding this scan"},
    503: {
        "model": ErrorResponse,
        "description": "queue full, memory budget full, not ready, shutting down, or the audit record "
        "could not be written",
        "headers": _RETRY_AFTER,
    },
    504: {
        "model": ErrorResponse,
        "description": "no result before the request deadline (decoding, conversion or the model)",
        "headers": _RETRY_AFTER,
    },
}


def _is_dicom_part(part: UploadFile) -> bool:
    return (part.content_type or "").split(";")[0].strip().lower() == DICOM_MEDIA_TYPE


def _retry_after(service: ServiceState) -> str:
    return str(max(1, int(np.ceil(service.settings.request_timeout_s / 10))))


def _admission(service: ServiceState) -> ScanAdmission:
    """The app's memory budget and decode pools, made by create_app."""
    assert service.admission is not None, "create_app makes the scan admission"
    return service.admission


def _timeout_error(service: ServiceState, what: str) -> ApiError:
    service.metrics.rejected.labels(reason="deadline").inc()
    return ApiError(
        504,
        "timeout",
        f"{what} ({service.settings.request_timeout_s:g} s)",
        {"Retry-After": _retry_after(service)},
    )


async def _reserve(
    service: ServiceState,
    lease: Lease,
    parts: tuple[bytes, bytes],
    raw: tuple[int, int] | None,
    dicom: tuple[bool, bool],
    deadline: float,
) -> None:
    """Reserve the scan's declared pixels (its limit when it declares none) before decoding: 503 when no
    room appears within XSCREEN_BUDGET_WAIT_S (and the deadline)."""
    max_pixels = service.settings.max_pixels
    declared = await asyncio.to_thread(declared_pixels, parts, raw_size=raw, dicom=dicom)
    pixels = max_pixels if declared is None else min(declared, max_pixels)  # more: 413 from the header
    wait_until = min(deadline, time.monotonic() + service.settings.budget_wait_s)
    try:
        await lease.acquire(pixels, wait_until)
    except BudgetExhaustedError as exc:
        service.metrics.rejected.labels(reason="memory_budget").inc()
        raise ApiError(
            503, "memory_budget", f"memory budget full: {exc}", {"Retry-After": _retry_after(service)}
        ) from None


def _consume(work: asyncio.Future) -> None:
    if not work.cancelled():
        work.exception()  # retrieved: an abandoned decode's error is not logged as unhandled


def _abandon(work: concurrent.futures.Future, wrapped: asyncio.Future, lease: Lease) -> None:
    """The request stops waiting for its decode: a decode not started yet never starts (its share is free
    at once); one already running keeps the lease's reservation until it ends."""
    wrapped.add_done_callback(_consume)
    work.cancel()
    lease.release_when_done(work)


async def _decode_within(
    service: ServiceState, admission: ScanAdmission, lease: Lease, deadline: float, job: functools.partial
) -> PreparedScan:
    """Run ``job`` (prepare_scan) in the bounded decode pool and wait for it until the deadline: 504 after."""
    work = admission.decode_pool.submit(job)
    wrapped = asyncio.wrap_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(wrapped), max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        _abandon(work, wrapped, lease)
        raise _timeout_error(service, "scan not decoded before the request deadline") from None
    except ScanExpiredError:
        raise _timeout_error(service, "scan not decoded before the request deadline") from None
    except asyncio.CancelledError:  # the client went away
        _abandon(work, wrapped, lease)
        raise


async def _prepare_within_budget(
    service: ServiceState,
    request: Request,
    lease: Lease,
    high: UploadFile,
    low: UploadFile,
    width: int | None,
    height: int | None,
    deadline: float,
) -> PreparedScan:
    """Read the parts, reserve their declared pixels, then decode and convert them within the deadline."""
    admission = _admission(service)
    dicom = (_is_dicom_part(high), _is_dicom_part(low))
    high_bytes, low_bytes = await high.read(), await low.read()
    raw = (width, height) if width is not None and height is not None else None
    await _reserve(service, lease, (high_bytes, low_bytes), raw, dicom, deadline)
    job = functools.partial(
        prepare_scan,
        high_bytes,
        low_bytes,
        width=width,
        height=height,
        max_pixels=service.settings.max_pixels,
        formats=service.settings.formats,
        dicom=dicom,
        pool=admission.helper_pool,
        deadline=deadline,
        check_energy=service.settings.check_energy_order,
    )
    del high_bytes, low_bytes  # the job holds them until it ends
    return await _decode_within(service, admission, lease, deadline, job)


async def _run_detection(
    service: ServiceState,
    request: Request,
    lease: Lease,
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
        prepared = await _prepare_within_budget(service, request, lease, high, low, width, height, deadline)
    service.metrics.stage_seconds.labels(stage="decode").observe(prepared.decode_seconds)
    service.metrics.stage_seconds.labels(stage="convert").observe(prepared.convert_seconds)
    try:
        result = await batcher.submit(prepared.image, deadline)
    except QueueFullError as exc:
        service.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": _retry_after(service)}) from None
    except DeadlineExceededError as exc:
        raise _timeout_error(service, str(exc)) from None
    except BatcherStoppedError as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None
    except BatchFailedError as exc:
        raise ApiError(500, "inference_failed", str(exc)) from None
    prepared.drop_image()

    backend = result.backend  # the model that ran this scan's batch (a switch may have happened since)
    info = backend.info
    threshold = effective_threshold(score_threshold, service.settings.score_threshold, info)
    detections = detections_from_output(result.output, info, class_ids(info.class_names), threshold)
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
    await _audit(service, request, response, time.perf_counter() - t_start)
    return prepared, response


async def _audit(service: ServiceState, request: Request, response: DetectResponse, latency: float) -> None:
    """Append the scan's audit record and wait for its fsync: no answer leaves without its record."""
    kid = getattr(request.state, "key_id", None)  # set by the request guard, which checked the key
    if service.audit is None:
        return
    record = audit_record(
        response,
        latency,
        route=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        trace_id=getattr(request.state, "trace_id", None),
        key_id=kid,
    )
    try:
        await service.audit.append(record)
    except AuditError as exc:
        service.metrics.audit_failures.labels(reason=exc.reason).inc()
        log.error(
            "audit record not written: scan refused", extra={"scan_id": response.scan_id, "reason": str(exc)}
        )
        raise ApiError(
            503,
            "audit_unavailable",
            "the scan's audit record could not be written, so no answer is given "
            "(the audit disk is full or unwritable)",
            {"Retry-After": _retry_after(service)},
        ) from None
    service.metrics.audit_records.inc()


@router.post(
    "/detect",
    response_model=DetectResponse,
    responses={
        200: {
            "content": {DICOM_MEDIA_TYPE: {}},
            "description": "detections as JSON, or as a DICOS TDR with 'Accept: application/dicom'",
        },
        **_ERRORS,
    },
    summary="Detect threats in a raw scan",
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
) -> DetectResponse | Response:
    with _admission(service).budget.lease() as lease:  # held until the answer is built
        prepared, response = await _run_detection(
            service, request, lease, high, low, width, height, scan_id, score_threshold
        )
        if wants_dicom(request.headers.get("accept")):
            tdr = await asyncio.to_thread(tdr_from_response, prepared, response)
            return Response(tdr, media_type=DICOM_MEDIA_TYPE, headers={"X-Scan-Id": response.scan_id})
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
    with _admission(service).budget.lease() as lease:  # the picture counts against it too
        prepared, response = await _run_detection(
            service, request, lease, high, low, width, height, scan_id, score_threshold
        )
        png = await asyncio.to_thread(render_response_png, prepared, response)
        del prepared
    return Response(png, media_type="image/png", headers={"X-Scan-Id": response.scan_id})
