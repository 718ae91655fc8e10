"""One detection flow for every front end: scan bytes -> checked, converted scan -> model run -> detections
at the resolved threshold, with timings and the model's identity.

``POST /detect`` and ``/render``, the DICOS listener and ``xscreen detect`` each call these and only render
the result (JSON, PNG, TDR, a table). Problems with a scan are ``xscreen.scans`` errors; the service maps
them to HTTP answers, the CLI prints them.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from xscreen.inference.base import InferenceBackend, ModelInfo
from xscreen.inference.response import (
    BagResponse,
    Box,
    Detection,
    DetectResponse,
    ImageSize,
    ModelSummary,
    ViewResult,
    ViewSource,
)
from xscreen.model.classes import CLCXRAY_CLASSES, normalise_name
from xscreen.scans import (
    ScanError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    check_pair,
    convert_parallel,
    convert_scan,
    decode_raw_uint16,
    read_scan,
    sniff_format,
)
from xscreen.scans.dicos.dx import DxPair, read_dx_pair
from xscreen.scans.dicos.files import DX_FOR_PROCESSING, new_uid
from xscreen.scans.dicos.tdr import AtrIdentity, ThreatObject, write_tdr
from xscreen.scans.energy import check_energy_order
from xscreen.scans.errors import ScanDeadlineError, ScanParameterError
from xscreen.scans.picture import render_png

_DECODER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="xscreen-decode")  # xscreen detect's helpers


# -- scan in ---------------------------------------------------------------------------------------------
@dataclass
class PreparedScan:
    high: np.ndarray  # uint16 [H, W]
    low: np.ndarray  # uint16 [H, W]
    image: np.ndarray  # float32 [H, W, 3], xscreen.scans.convert_scan (docs/method.md §1)
    decode_seconds: float | None  # None: decoded before the pipeline (a spooled DICOS pair)
    convert_seconds: float
    dicos: DxPair | None = None  # the DX images the scan came in as, referenced by a TDR answer

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.high.shape[1]), int(self.high.shape[0])

    def drop_image(self) -> None:
        """Let the converted image go once the model has run: the answer, the picture and a TDR need only
        the raw pair (the image is 12 bytes a pixel, three times the pair)."""
        self.image = np.empty((0, 0, 3), np.float32)


def _check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise ScanDeadlineError(f"deadline passed before {stage}")


def check_formats(high_bytes: bytes, low_bytes: bytes, raw: bool, accepted: list[str] | None) -> None:
    """UnsupportedScanFormatError when a part's encoding is not among ``accepted`` (XSCREEN_FORMATS)."""
    if accepted is None:
        return
    if raw:
        if "raw" not in accepted:
            raise UnsupportedScanFormatError(
                f"raw uint16 buffers are not accepted here (accepted: {accepted})"
            )
        return
    for label, buf in (("high", high_bytes), ("low", low_bytes)):
        kind = sniff_format(buf)
        if kind is not None and kind not in accepted:
            raise UnsupportedScanFormatError(
                f"{label}: {kind} files are not accepted here (accepted: {accepted})"
            )


def _dicom_parts(
    high_bytes: bytes, low_bytes: bytes, declared: tuple[bool, bool], raw: bool, formats: list[str] | None
) -> bool:
    """True when the parts are a DICOS DX pair (DICM preamble, or declared application/dicom)."""
    dicom = [d or sniff_format(b) == "dicom" for b, d in zip((high_bytes, low_bytes), declared, strict=True)]
    if not any(dicom):
        return False
    if formats is not None and "dicom" not in formats:
        raise UnsupportedScanFormatError(f"DICOS files are not accepted here (accepted: {formats})")
    if raw:
        raise ScanParameterError("'width' and 'height' are for raw buffers, not DICOS DX")
    if not all(dicom):
        which, other = ("high", "low") if dicom[0] else ("low", "high")
        raise ScanError(f"{which} is a DICOS file but {other} is not; send both energies as DX")
    return True


def _decode_pair(
    high_bytes: bytes,
    low_bytes: bytes,
    size: tuple[int, int] | None,
    max_pixels: int,
    pool: ThreadPoolExecutor,
    deadline: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The two energy images of a file pair, or of raw little-endian uint16 buffers of ``size`` (w, h)."""
    if size is not None:
        width, height = size
        if width * height > max_pixels:
            raise ScanTooLargeError(
                f"{width}x{height} = {width * height} pixels, more than the limit of {max_pixels} pixels"
            )
        high = decode_raw_uint16(high_bytes, width, height, max_pixels=max_pixels)
        return high, decode_raw_uint16(low_bytes, width, height, max_pixels=max_pixels)
    # the two images decode in parallel (OpenCV/tifffile release the GIL)
    low_future = pool.submit(read_scan, low_bytes, name="low", max_pixels=max_pixels, deadline=deadline)
    try:
        high = read_scan(high_bytes, name="high", max_pixels=max_pixels, deadline=deadline)
    except BaseException:
        wait([low_future])  # report the high image's problem first, leave nothing running
        raise
    return high, low_future.result()


def prepare_scan(
    high_bytes: bytes,
    low_bytes: bytes,
    *,
    width: int | None,
    height: int | None,
    max_pixels: int,
    formats: list[str] | None = None,
    dicom: tuple[bool, bool] = (False, False),
    pool: ThreadPoolExecutor | None = None,
    deadline: float | None = None,
    check_energy: bool = True,
) -> PreparedScan:
    """Decode both energy images (files, DICOS DX, or raw little-endian uint16 with width/height), check,
    convert. ``dicom`` says which parts were sent as application/dicom (read even without a preamble).

    CPU-bound (run it in a worker thread); every problem with the input is a ``ScanError``:
    ``ScanTooLargeError``, ``UnsupportedScanFormatError``, ``ScanSizeMismatchError``,
    ``EnergiesSwappedError``, ``ScanParameterError`` or a plain ``ScanError``.
    ``pool``: where the low image's decode and half of the conversion run (default: a module pool).
    ``deadline`` (time.monotonic()): past it, ``ScanDeadlineError`` at the next stage boundary, or inside
    a decoder's bounded inflation. ``check_energy``: refuse exchanged high/low parts (docs/method.md §1a;
    for DICOS, pixels that contradict Image Type).
    """
    pool = pool or _DECODER
    _check_deadline(deadline, "decoding")
    if (width is None) != (height is None):
        raise ScanParameterError("raw uint16 buffers need both 'width' and 'height'")
    size = (width, height) if width is not None and height is not None else None
    is_dicos = _dicom_parts(high_bytes, low_bytes, dicom, size is not None, formats)
    if not is_dicos:
        check_formats(high_bytes, low_bytes, size is not None, formats)
    t0 = time.perf_counter()
    pair = None
    if is_dicos:
        pair = read_dx_pair(high_bytes, low_bytes, max_pixels=max_pixels, force=dicom, deadline=deadline)
        high, low = pair.high.pixels, pair.low.pixels
    else:
        high, low = _decode_pair(high_bytes, low_bytes, size, max_pixels, pool, deadline)
    check_pair(high, low)
    if check_energy:
        check_energy_order(high, low, labelled_by="Image Type (0008,0008)" if is_dicos else None)
    _check_deadline(deadline, "conversion")
    t1 = time.perf_counter()
    image = convert_parallel(high, low, pool)
    return PreparedScan(high, low, image, t1 - t0, time.perf_counter() - t1, dicos=pair)


def prepare_views(
    views: list[tuple[bytes, bytes]], *, dicom: list[tuple[bool, bool]] | None = None, **options
) -> list[PreparedScan]:
    """``prepare_scan`` on each view of a bag, one after another, with the same ``options``; the views
    of DICOS DX must share one study (``check_one_study``). An error names the view it came from."""
    scans = []
    for i, (high, low) in enumerate(views):
        try:
            flags = dicom[i] if dicom is not None else (False, False)
            scans.append(prepare_scan(high, low, dicom=flags, **options))
        except ScanError as exc:
            if len(views) > 1:
                exc.args = (f"view {i}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
            raise
    check_one_study(scans)
    return scans


def prepare_dx_pair(pair: DxPair) -> PreparedScan:
    """A DX pair decoded (and checked) already, converted for the model."""
    t0 = time.perf_counter()
    image = convert_scan(pair.high.pixels, pair.low.pixels)
    return PreparedScan(pair.high.pixels, pair.low.pixels, image, None, time.perf_counter() - t0, dicos=pair)


# -- model run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRun:
    """One scan's share of a model batch."""

    output: dict[str, np.ndarray]  # boxes [K, 4], scores [K], labels [K] (InferenceBackend.predict)
    backend: InferenceBackend  # the model that produced it (the served one may change between batches)
    stage_seconds: dict[str, float]  # for the whole batch
    inference_seconds: float  # the whole batch
    batch_size: int
    queue_wait: float | None = None  # seconds queued before the batch ran (the service's batcher)


def run_model(backend: InferenceBackend, images: list[np.ndarray]) -> list[ModelRun]:
    """``backend.predict`` on one batch of converted scans, timed; one ``ModelRun`` per image."""
    t0 = time.perf_counter()
    outputs, stages = backend.predict(images)
    if len(outputs) != len(images):
        raise RuntimeError(f"backend returned {len(outputs)} results for {len(images)} scans")
    elapsed = time.perf_counter() - t0
    return [ModelRun(out, backend, dict(stages), elapsed, len(images)) for out in outputs]


# -- detections out --------------------------------------------------------------------------------------
def resolve_threshold(requested: float | None, setting: float | None, info: ModelInfo) -> float:
    """The request's threshold, else the XSCREEN_SCORE_THRESHOLD override, else the model's own."""
    if requested is not None:
        return requested
    return info.score_threshold if setting is None else setting


@functools.lru_cache(maxsize=16)
def class_ids(class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The dataset's category id per class (CLCXray ids by normalised name; position+1 otherwise)."""
    by_name = {normalise_name(c.name): c.category_id for c in CLCXRAY_CLASSES}
    return tuple(by_name.get(normalise_name(n), i + 1) for i, n in enumerate(class_names))


def detections_from_output(
    output: dict[str, np.ndarray], info: ModelInfo, threshold: float
) -> list[Detection]:
    """Detections with score >= threshold, highest score first, boxes in the scan's pixels."""
    ids = class_ids(info.class_names)
    scores = np.asarray(output["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(output["labels"]).reshape(-1).astype(np.int64)
    boxes = np.asarray(output["boxes"], dtype=np.float64).reshape(-1, 4)
    detections = []
    for i in np.argsort(-scores, kind="stable"):
        score, label = float(scores[i]), int(labels[i])
        if score < threshold or not 0 <= label < len(info.class_names):
            continue
        x1, y1, x2, y2 = (round(float(v), 2) for v in boxes[i])
        detections.append(
            Detection(
                class_id=ids[label],
                class_name=info.class_names[label],
                group=info.groups[label],
                score=round(min(max(score, 0.0), 1.0), 6),
                box=Box(x1=x1, y1=y1, x2=x2, y2=y2),
            )
        )
    return detections


def model_summary(info: ModelInfo, backend: str, device: str) -> ModelSummary:
    """The answer's ``model`` block: which model, run by which backend ("torch", "onnxruntime") where."""
    return ModelSummary(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        backend=backend,
        device=device,
        precision=info.precision,
    )


def is_alarm(detections: list[Detection], threshold: float) -> bool:
    """The alarm decision: any detection at or above the operating threshold (docs/service.md, "Alarm")."""
    return any(d.score >= threshold for d in detections)


@dataclass(frozen=True)
class DetectionResult:
    """What detection found in one scan, at which threshold, by which model, in how many seconds."""

    detections: list[Detection]
    score_threshold: float
    timings: dict[str, float]  # seconds per stage, rounded to microseconds
    model: ModelSummary
    size: tuple[int, int]  # (width, height)
    batch_size: int

    def response(self, scan_id: str) -> DetectResponse:
        """The ``POST /detect`` body (``xscreen detect --json`` prints the same)."""
        return DetectResponse(
            scan_id=scan_id,
            model=self.model,
            image=ImageSize(width=self.size[0], height=self.size[1]),
            score_threshold=self.score_threshold,
            alarm=is_alarm(self.detections, self.score_threshold),
            detections=self.detections,
            batch_size=self.batch_size,
            timings=self.timings,
        )


def detection_result(
    prepared: PreparedScan,
    run: ModelRun,
    *,
    backend_name: str,
    threshold_setting: float | None,
    started: float,
    requested_threshold: float | None = None,
) -> DetectionResult:
    """The detections of ``run`` at the resolved threshold, with the scan's timings since ``started``
    (time.perf_counter()). ``threshold_setting``: XSCREEN_SCORE_THRESHOLD (None: the model's own)."""
    info = run.backend.info
    threshold = resolve_threshold(requested_threshold, threshold_setting, info)
    timings = {} if prepared.decode_seconds is None else {"decode": prepared.decode_seconds}
    timings["convert"] = prepared.convert_seconds
    if run.queue_wait is not None:
        timings["queue_wait"] = run.queue_wait
    timings |= run.stage_seconds
    timings["inference"] = run.inference_seconds
    timings["total"] = time.perf_counter() - started
    return DetectionResult(
        detections=detections_from_output(run.output, info, threshold),
        score_threshold=threshold,
        timings={k: round(v, 6) for k, v in timings.items()},
        model=model_summary(info, backend_name, run.backend.device),
        size=prepared.size,
        batch_size=run.batch_size,
    )


def view_source(part: int, prepared: PreparedScan) -> ViewSource:
    """A view's identity: its position among the request's parts, and its DX images when it came as DICOS."""
    if prepared.dicos is None:
        return ViewSource(part=part)
    pair = prepared.dicos
    return ViewSource(
        part=part,
        series_uid=pair.high.series_uid or None,
        high_instance_uid=pair.high.sop_instance_uid or None,
        low_instance_uid=pair.low.sop_instance_uid or None,
    )


def check_one_study(scans: list[PreparedScan]) -> None:
    """The views of one bag sent as DICOS DX belong to one study (ScanError otherwise): a bag is a study."""
    studies = {s.dicos.study_uid for s in scans if s.dicos is not None}
    if len(studies) > 1:
        raise ScanError(f"the views' DX belong to {len(studies)} studies; a bag's views share one study")
    if studies and any(s.dicos is None for s in scans):
        raise ScanError("some views are DICOS DX and some are not; send every view of a bag the same way")


@dataclass(frozen=True)
class BagResult:
    """What detection found in each view of a bag (views detected independently, in one batch)."""

    views: list[DetectionResult]
    sources: list[ViewSource]
    timings: dict[str, float]

    @property
    def alarm(self) -> bool:
        return any(is_alarm(v.detections, v.score_threshold) for v in self.views)

    def answer(self, scan_id: str) -> DetectResponse | BagResponse:
        """The ``POST /detect`` body (``xscreen detect --json`` prints the same): one view answers a
        ``DetectResponse`` as a single scan always has, several views a ``BagResponse``."""
        return self.views[0].response(scan_id) if len(self.views) == 1 else self.response(scan_id)

    def response(self, scan_id: str) -> BagResponse:
        """The body of a bag of several views (``xscreen detect --json`` prints it too)."""
        first = self.views[0]
        return BagResponse(
            scan_id=scan_id,
            model=first.model,
            score_threshold=first.score_threshold,
            alarm=self.alarm,
            views=[
                ViewResult(
                    view=i,
                    source=source,
                    image=ImageSize(width=v.size[0], height=v.size[1]),
                    alarm=is_alarm(v.detections, v.score_threshold),
                    detections=v.detections,
                )
                for i, (v, source) in enumerate(zip(self.views, self.sources, strict=True))
            ],
            batch_size=first.batch_size,
            timings=self.timings,
        )


def bag_result(
    scans: list[PreparedScan],
    runs: list[ModelRun],
    *,
    backend_name: str,
    threshold_setting: float | None,
    started: float,
    requested_threshold: float | None = None,
) -> BagResult:
    """Each view's detections (``detection_result``) and the bag's timings: decode and convert summed over
    the views, the batch's queue wait, model stages and inference once, total since ``started``."""
    views = [
        detection_result(
            s,
            r,
            backend_name=backend_name,
            threshold_setting=threshold_setting,
            started=started,
            requested_threshold=requested_threshold,
        )
        for s, r in zip(scans, runs, strict=True)
    ]
    timings: dict[str, float] = {}
    if all(s.decode_seconds is not None for s in scans):
        timings["decode"] = sum(s.decode_seconds or 0.0 for s in scans)
    timings["convert"] = sum(s.convert_seconds for s in scans)
    waits = [r.queue_wait for r in runs if r.queue_wait is not None]
    if waits:
        timings["queue_wait"] = max(waits)
    timings |= runs[0].stage_seconds
    timings["inference"] = max(r.inference_seconds for r in runs)
    timings["total"] = time.perf_counter() - started
    sources = [view_source(i, s) for i, s in enumerate(scans)]
    return BagResult(views, sources, {k: round(v, 6) for k, v in timings.items()})


def detect_views(
    backend: InferenceBackend,
    scans: list[PreparedScan],
    *,
    backend_name: str,
    threshold_setting: float | None,
    started: float,
) -> BagResult:
    """Run the model on ``scans`` (the views of one bag, or one scan) as one batch: each view's detections
    and the bag's timings (``xscreen detect``; the service batches through its ``MicroBatcher`` and calls
    ``bag_result`` on its share of a batch)."""
    runs = run_model(backend, [s.image for s in scans])
    return bag_result(
        scans, runs, backend_name=backend_name, threshold_setting=threshold_setting, started=started
    )


# -- renderings shared by the front ends -----------------------------------------------------------------
def render_response_png(prepared: PreparedScan, response: DetectResponse) -> bytes:
    """The scan's pseudo-colour picture with the response's detections on it, as PNG bytes."""
    names = sorted({d.class_name for d in response.detections})
    boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in response.detections], np.float32)
    labels = np.array([names.index(d.class_name) for d in response.detections], np.int64)
    scores = np.array([d.score for d in response.detections], np.float32)
    return render_png(prepared.high, prepared.low, boxes.reshape(-1, 4), labels, scores, names)


def tdr_from_response(prepared: PreparedScan, response: DetectResponse) -> bytes:
    """The response as a DICOS Threat Detection Report (docs/dicos.md): one threat object per detection,
    referencing the scan's DX; a scan that did not come as DX references freshly generated UIDs."""
    return _write_tdr([prepared], [response.detections], response.scan_id, response.model, response.timings)


def tdr_from_bag(scans: list[PreparedScan], response: BagResponse) -> bytes:
    """A bag's answer as one TDR: it references every view's DX, and each threat object its own view's."""
    detections = [v.detections for v in response.views]
    return _write_tdr(scans, detections, response.scan_id, response.model, response.timings)


def tdr_from_answer(scans: list[PreparedScan], response: DetectResponse | BagResponse) -> bytes:
    """The TDR of an answer: ``tdr_from_response`` for one view, ``tdr_from_bag`` for a bag."""
    if isinstance(response, BagResponse):
        return tdr_from_bag(scans, response)
    return tdr_from_response(scans[0], response)


def _write_tdr(
    scans: list[PreparedScan],
    detections: list[list[Detection]],
    scan_id: str,
    model: ModelSummary,
    timings: dict[str, float],
) -> bytes:
    study = next((s.dicos.study_uid for s in scans if s.dicos is not None), None) or new_uid()
    views = [
        s.dicos.references()
        if s.dicos is not None
        else [(DX_FOR_PROCESSING, new_uid()), (DX_FOR_PROCESSING, new_uid())]
        for s in scans
    ]
    finished = dt.datetime.now(dt.UTC)
    started = finished - dt.timedelta(seconds=float(timings.get("total", 0.0)))
    objects = [
        ThreatObject((d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.class_name, d.group, d.score, view=i)
        for i, found in enumerate(detections)
        for d in found
    ]
    return write_tdr(
        objects,
        atr=AtrIdentity(model.name, model.version, model.sha256),
        references=[ref for refs in views for ref in refs],
        view_references=views,
        study_uid=study,
        scan_id=scan_id,
        started=started,
        finished=finished,
    )
