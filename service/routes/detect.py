"""``POST /detect`` (JSON detections) and ``POST /render`` (pseudo-colour PNG with boxes) on a scan pair."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from xscreen.inference.pipeline import (
    ModelRun,
    PreparedScan,
    bag_result,
    prepare_views,
    render_response_png,
    tdr_from_answer,
)
from xscreen.inference.response import BagResponse, DetectResponse
from xscreen.scans import ScanError
from xscreen.scans.errors import ScanDeadlineError
from xscreen.scans.peek import declared_pixels
from xscreen.service.audit import AuditError, audit_record
from xscreen.service.auth import require_api_key
from xscreen.service.batching import (
    BatcherStoppedError,
    BatchFailedError,
    DeadlineExceededError,
    MicroBatcher,
    QueueFullError,
)
from xscreen.service.budget import BudgetExhaustedError, Lease, ScanAdmission
from xscreen.service.errors import ApiError, scan_error_to_api
from xscreen.service.scan_store import store_key
from xscreen.service.schemas import SCAN_ID_PATTERN, ErrorResponse
from xscreen.service.state import ServiceDep, ServiceState
from xscreen.service.tdr import DICOM_MEDIA_TYPE, wants_dicom

log = logging.getLogger("xscreen.service")

# require_api_key declares the Bearer scheme in OpenAPI; the request guard has already checked the key.
router = APIRouter(tags=["detection"], dependencies=[Depends(require_api_key)])

_PART_HELP = (
    "energy image: 16-bit greyscale PNG, 16-bit TIFF, .npy (uint16 [H, W]) or DICOS DX (application/dicom "
    "or a DICM preamble; both parts then DX); or, with 'width' and 'height', headerless little-endian "
    "uint16 pixels, row-major"
)
_VIEWS_HELP = (
    ". A bag of several views repeats 'high' and 'low' in order: the i-th high and the i-th low are view i "
    "(at most XSCREEN_MAX_VIEWS); DICOS DX views of one bag share one study"
)
HighPart = Annotated[list[UploadFile], File(description="high-energy " + _PART_HELP + _VIEWS_HELP)]
LowPart = Annotated[list[UploadFile], File(description="low-energy " + _PART_HELP + _VIEWS_HELP)]

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


def _view_pixels(
    views: list[tuple[bytes, bytes]], raw: tuple[int, int] | None, dicom: list[tuple[bool, bool]], limit: int
) -> int:
    """The pixels the views declare, each view counted at most at the limit (and at it when it declares
    none; more is refused with 413 from the header)."""
    total = 0
    for parts, flags in zip(views, dicom, strict=True):
        declared = declared_pixels(parts, raw_size=raw, dicom=flags)
        total += limit if declared is None else min(declared, limit)
    return total


async def _reserve(
    service: ServiceState,
    lease: Lease,
    views: list[tuple[bytes, bytes]],
    raw: tuple[int, int] | None,
    dicom: list[tuple[bool, bool]],
    deadline: float,
) -> None:
    """Reserve the views' declared pixels before decoding: 503 when no room appears within
    XSCREEN_BUDGET_WAIT_S (and the deadline)."""
    max_pixels = service.settings.max_pixels
    pixels = await asyncio.to_thread(_view_pixels, views, raw, dicom, max_pixels)
    largest = max(lease.budget.capacity, max_pixels)  # what one request may hold alone (docs/service.md)
    if len(views) > 1 and pixels > largest:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the bag's {len(views)} views hold {pixels} pixels per energy, more than the {largest} one "
            "request may hold (XSCREEN_MAX_INFLIGHT_MPIXELS, or XSCREEN_MAX_PIXELS when larger)",
        )
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
) -> list[PreparedScan]:
    """Run ``job`` (prepare_views) in the bounded decode pool and wait for it until the deadline: 504 after;
    a scan the pipeline refuses is answered 4xx (service.errors.scan_error_to_api)."""
    work = admission.decode_pool.submit(job)
    wrapped = asyncio.wrap_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(wrapped), max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        _abandon(work, wrapped, lease)
        raise _timeout_error(service, "scan not decoded before the request deadline") from None
    except ScanDeadlineError:
        raise _timeout_error(service, "scan not decoded before the request deadline") from None
    except ScanError as exc:
        raise scan_error_to_api(exc) from None
    except asyncio.CancelledError:  # the client went away
        _abandon(work, wrapped, lease)
        raise


@dataclass(frozen=True)
class _ScanForm:
    """The form fields of a scan request (``/detect`` and ``/render``): one or more views."""

    high: list[UploadFile]
    low: list[UploadFile]
    width: int | None
    height: int | None
    scan_id: str | None
    score_threshold: float | None


def _check_views(service: ServiceState, form: _ScanForm) -> None:
    """As many 'high' parts as 'low' ones, and no more views than XSCREEN_MAX_VIEWS (422)."""
    highs, lows, limit = len(form.high), len(form.low), service.settings.max_views
    if highs != lows:
        raise ApiError(
            422,
            "invalid_request",
            f"{highs} 'high' parts and {lows} 'low' parts: each view of a bag is one 'high' and one 'low'",
        )
    if highs > limit:
        raise ApiError(422, "too_many_views", f"{highs} views; a bag has at most {limit} (XSCREEN_MAX_VIEWS)")


async def _prepare_within_budget(
    service: ServiceState, lease: Lease, form: _ScanForm, deadline: float
) -> list[PreparedScan]:
    """Read the parts, reserve their declared pixels, then decode and convert the views within the
    deadline (one decode job for the bag: its views one after another)."""
    admission = _admission(service)
    _check_views(service, form)
    dicom = [(_is_dicom_part(h), _is_dicom_part(lo)) for h, lo in zip(form.high, form.low, strict=True)]
    views = [(await h.read(), await lo.read()) for h, lo in zip(form.high, form.low, strict=True)]
    raw = (form.width, form.height) if form.width is not None and form.height is not None else None
    await _reserve(service, lease, views, raw, dicom, deadline)
    job = functools.partial(
        prepare_views,
        views,
        width=form.width,
        height=form.height,
        max_pixels=service.settings.max_pixels,
        formats=service.settings.formats,
        dicom=dicom,
        pool=admission.helper_pool,
        deadline=deadline,
        check_energy=service.settings.check_energy_order,
    )
    del views  # the job holds them until it ends
    return await _decode_within(service, admission, lease, deadline, job)


def _ready_batcher(service: ServiceState) -> MicroBatcher:
    """The batcher, if the model is loaded and the queue has room (503 otherwise, before any decoding)."""
    batcher = service.batcher
    if batcher is None or service.backend is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "5"})
    if batcher.full():  # cheap early refusal, before decoding anything
        service.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(503, "queue_full", "too many scans waiting", {"Retry-After": _retry_after(service)})
    return batcher


async def _run_model(
    service: ServiceState, batcher: MicroBatcher, images: list, deadline: float
) -> list[ModelRun]:
    """The views' share of a model batch (a bag's views together); the batcher's refusals as HTTP answers."""
    try:
        return await batcher.submit_bag(images, deadline)
    except QueueFullError as exc:
        service.metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(503, "queue_full", str(exc), {"Retry-After": _retry_after(service)}) from None
    except DeadlineExceededError as exc:
        raise _timeout_error(service, str(exc)) from None
    except BatcherStoppedError as exc:
        raise ApiError(503, "shutting_down", str(exc), {"Retry-After": "5"}) from None
    except BatchFailedError as exc:
        raise ApiError(500, "inference_failed", str(exc)) from None


async def _run_detection(
    service: ServiceState, request: Request, lease: Lease, form: _ScanForm
) -> tuple[list[PreparedScan], DetectResponse | BagResponse]:
    """The detection pipeline (xscreen.inference.pipeline) behind the service's limits, batcher and audit:
    one view answers a ``DetectResponse`` as always, several a ``BagResponse``."""
    t_start = time.perf_counter()
    deadline = time.monotonic() + service.settings.request_timeout_s
    scan_id = form.scan_id or uuid.uuid4().hex
    request.state.scan_id = scan_id
    batcher = _ready_batcher(service)
    with batcher.incoming():
        scans = await _prepare_within_budget(service, lease, form, deadline)
    for prepared in scans:
        service.metrics.stage_seconds.labels(stage="decode").observe(prepared.decode_seconds)
        service.metrics.stage_seconds.labels(stage="convert").observe(prepared.convert_seconds)
    runs = await _run_model(service, batcher, [s.image for s in scans], deadline)
    for prepared in scans:
        prepared.drop_image()
    bag = bag_result(
        scans,
        runs,
        backend_name=service.settings.backend,
        threshold_setting=service.settings.score_threshold,
        started=t_start,
        requested_threshold=form.score_threshold,
    )
    response = bag.answer(scan_id)
    service.metrics.count_answer(response, source="http")
    request.state.timings = response.timings
    request.state.detections = sum(len(v.detections) for v in bag.views)
    await _audit(service, request, response, time.perf_counter() - t_start)
    if service.store is not None:  # kept after the answer's record; never fails or delays the answer
        state = request.state
        key = store_key(getattr(state, "request_id", None), getattr(state, "trace_id", None), scan_id)
        kid = getattr(state, "key_id", None)
        source = request.url.path + (f" key {kid}" if kid else "")
        service.store.keep(key, scans, response.model_dump(mode="json"), source)
    return scans, response


async def _audit(
    service: ServiceState, request: Request, response: DetectResponse | BagResponse, latency: float
) -> None:
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
    response_model=DetectResponse | BagResponse,
    responses={
        200: {
            "content": {DICOM_MEDIA_TYPE: {}},
            "description": "detections as JSON (a DetectResponse for one view, a BagResponse for a bag of "
            "several), or as a DICOS TDR with 'Accept: application/dicom' (one TDR per bag)",
        },
        **_ERRORS,
    },
    summary="Detect threats in a raw scan or a bag of several views",
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
) -> DetectResponse | BagResponse | Response:
    with _admission(service).budget.lease() as lease:  # held until the answer is built
        form = _ScanForm(high, low, width, height, scan_id, score_threshold)
        scans, response = await _run_detection(service, request, lease, form)
        if wants_dicom(request.headers.get("accept")):
            tdr = await asyncio.to_thread(tdr_from_answer, scans, response)
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
        if len(high) > 1 or len(low) > 1:
            raise ApiError(422, "one_view_only", "/render draws one view: send one 'high' and one 'low'")
        form = _ScanForm(high, low, width, height, scan_id, score_threshold)
        scans, response = await _run_detection(service, request, lease, form)
        assert isinstance(response, DetectResponse)  # one view
        png = await asyncio.to_thread(render_response_png, scans[0], response)
        del scans
    return Response(png, media_type="image/png", headers={"X-Scan-Id": response.scan_id})
