"""A complete DICOS bag from the listener's spool through detection: its DX read back and grouped into views,
the views run in one batch of the app's batcher, answered, counted and audited as over HTTP, and its one TDR
(service/dicos_listener.py's worker threads call these; docs/dicos.md "Bags")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from xscreen.inference.pipeline import bag_result, prepare_dx_pair, tdr_from_bag, tdr_from_response
from xscreen.inference.response import BagResponse, DetectResponse
from xscreen.scans import ScanError
from xscreen.scans.dicos.dx import DxPair, bag_pairs, dx_from_encoded
from xscreen.scans.energy import check_energy_order
from xscreen.service.audit import AuditError, audit_record
from xscreen.service.dicos_spool import Spool, read_half
from xscreen.service.state import ServiceState

_IMAGE_TYPE = "Image Type (0008,0008)"


class ModelNotLoadedError(RuntimeError):
    """No model to run yet (start-up, or a switch in progress): a spooled bag waits."""


def load_bag(
    spool: Spool, study: Path, order: list[str], *, max_pixels: int, check_energy: bool
) -> list[DxPair]:
    """The bag's views from the spool, decoded and checked: its DX in arrival order (``order``: SOP Instance
    UIDs; the files' modification times for the others), grouped by series (``bag_pairs``), each view's
    pixels against its Image Type unless ``check_energy`` is off (docs/method.md 1a)."""
    paths = spool.halves(study)
    if not paths:
        raise ScanError("the spool holds no DX for this study")
    rank = {uid: i for i, uid in enumerate(order)}
    images = []
    for path in paths:
        half = read_half(path)
        name = f"DICOS from {half.calling_ae}"
        image = dx_from_encoded(half.raw, half.transfer_syntax, name=name, max_pixels=max_pixels)
        images.append((rank.get(image.sop_instance_uid, len(rank)), path.stat().st_mtime_ns, image))
    images.sort(key=lambda item: item[:2])
    pairs = bag_pairs([image for *_, image in images])
    for i, pair in enumerate(pairs if check_energy else []):
        try:
            check_energy_order(pair.high.pixels, pair.low.pixels, labelled_by=_IMAGE_TYPE)
        except ScanError as exc:
            if len(pairs) > 1:
                exc.args = (f"view {i}: {exc}", *exc.args[1:])
            raise
    return pairs


def detect_bag(
    service: ServiceState, loop: asyncio.AbstractEventLoop, pairs: list[DxPair], scan_id: str, calling_ae: str
) -> tuple[bytes, DetectResponse | BagResponse]:
    """The bag's views through the app's batcher in one batch (from a listener thread, on ``loop``), answered
    as over HTTP (a ``DetectResponse`` for one view, a ``BagResponse`` for several), counted as a DICOS bag,
    audited (one record), and its one TDR. The batcher's and the audit's errors propagate."""
    s, metrics = service.settings, service.metrics
    batcher, backend = service.batcher, service.backend
    if batcher is None or backend is None:
        raise ModelNotLoadedError("the model is not loaded")
    t0 = time.perf_counter()
    scans = [prepare_dx_pair(pair) for pair in pairs]
    future = asyncio.run_coroutine_threadsafe(
        batcher.submit_bag([p.image for p in scans], time.monotonic() + s.request_timeout_s), loop
    )
    runs = future.result(timeout=s.request_timeout_s + 5)
    for prepared in scans:
        prepared.drop_image()
    bag = bag_result(scans, runs, backend_name=s.backend, threshold_setting=s.score_threshold, started=t0)
    response = bag.views[0].response(scan_id) if len(scans) == 1 else bag.response(scan_id)
    metrics.count_answer(response, source="dicos")
    # no TDR leaves without its audit record (docs/service.md "Audit trail")
    request_id = f"dicos-{scan_id}"  # the bag's key in the audit trail and the scan store
    if service.audit is not None:
        record = audit_record(
            response, time.perf_counter() - t0, route="dicos", request_id=request_id, calling_ae=calling_ae
        )
        try:
            asyncio.run_coroutine_threadsafe(service.audit.append(record), loop).result(timeout=60)
        except AuditError as exc:
            metrics.audit_failures.labels(reason=exc.reason).inc()
            raise
        metrics.audit_records.inc()
    if service.store is not None:
        service.store.keep(request_id, scans, response.model_dump(mode="json"), f"DICOS AE {calling_ae}")
    if isinstance(response, BagResponse):
        return tdr_from_bag(scans, response), response
    return tdr_from_response(scans[0], response), response
