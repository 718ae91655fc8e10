"""The DICOS network listener: a pynetdicom SCP that pairs the two DX energies of a scan, runs detection
through the HTTP app's batcher and C-STOREs the TDR to a destination (docs/dicos.md, "Network").

pynetdicom runs each association in its own thread; a C-STORE handler only checks and files the half,
pairing is by Study Instance UID, and a complete pair is processed by a small worker pool that submits
the converted scan to the app's ``MicroBatcher`` on the event loop (same model, queue and limits as HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from xscreen.scans import ScanError, convert_scan
from xscreen.scans.dicos import (
    DEFLATED_LE,
    DICOS_CT_SOP_CLASS,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    DX_SOP_CLASSES,
    EXPLICIT_LE,
    IMPLICIT_LE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    TDR_SOP_CLASS,
    DxImage,
    DxPair,
    dx_from_dataset,
    dx_pair,
)
from xscreen.service.audit import AuditError, audit_record
from xscreen.service.models import class_ids
from xscreen.service.response import detections_from_output, effective_threshold, model_summary
from xscreen.service.scan_input import PreparedScan
from xscreen.service.schemas import DetectResponse, ImageSize
from xscreen.service.state import ServiceState
from xscreen.service.tdr import tdr_from_response

log = logging.getLogger("xscreen.service.dicos")

# Explicit VR Little Endian first: peers that propose several syntaxes get the plainest one.
SCP_TRANSFER_SYNTAXES = [
    EXPLICIT_LE,
    IMPLICIT_LE,
    DEFLATED_LE,
    JPEG_LOSSLESS_SV1,
    JPEG_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
]
# C-STORE status codes (DICOM PS3.4 B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_MATCHING_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
_KEYWORDS = {
    DX_FOR_PRESENTATION: "DICOSDigitalXRayImageStorageForPresentation",
    DX_FOR_PROCESSING: "DICOSDigitalXRayImageStorageForProcessing",
    TDR_SOP_CLASS: "DICOSThreatDetectionReportStorage",
    DICOS_CT_SOP_CLASS: "DICOSCTImageStorage",
}


def register_dicos_uids() -> None:
    """Make the DICOS storage SOP classes known to pynetdicom (it ships without them)."""
    from pynetdicom import sop_class
    from pynetdicom.service_class import StorageServiceClass

    for uid, keyword in _KEYWORDS.items():
        if not hasattr(sop_class, keyword):
            sop_class.register_uid(uid, keyword, StorageServiceClass)


@dataclass
class _Pending:
    image: DxImage
    arrived: float  # time.monotonic()
    calling_ae: str


class DicosListener:
    """Start with ``start()`` inside the app's lifespan (after the batcher), stop with ``stop()``."""

    def __init__(self, service: ServiceState, loop: asyncio.AbstractEventLoop):
        self.service, self.loop = service, loop
        self.settings, self.metrics = service.settings, service.metrics
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xscreen-dicos")
        self._server = None
        self._sweeper: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        register_dicos_uids()
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
        s = self.settings
        ae = AE(ae_title=s.dicos_ae_title)
        ae.require_calling_aet = list(s.dicos_allowed_aets)
        for uid in DX_SOP_CLASSES:
            ae.add_supported_context(uid, SCP_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((s.dicos_host, s.dicos_port), block=False, evt_handlers=handlers)
        self._sweeper = threading.Thread(target=self._sweep, name="xscreen-dicos-sweep", daemon=True)
        self._sweeper.start()
        if s.dicos_dest_host is None:
            where = f"written to {s.dicos_output_dir}" if s.dicos_output_dir else "only logged"
            log.warning(f"DICOS listener: no destination configured (XSCREEN_DICOS_DEST_*): TDRs are {where}")
        log.info(
            "DICOS listener started",
            extra={
                "ae_title": s.dicos_ae_title,
                "dicos_host": s.dicos_host,
                "dicos_port": s.dicos_port,
                "allowed_aets": list(s.dicos_allowed_aets) or "any",
                "destination": f"{s.dicos_dest_ae_title}@{s.dicos_dest_host}:{s.dicos_dest_port}"
                if s.dicos_dest_host
                else None,
            },
        )

    def stop(self) -> None:
        """Refuse new associations, finish the pairs being processed (blocking: call it off the loop)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        self._workers.shutdown(wait=True)
        with self._lock:
            dropped = len(self._pending)
            self._pending.clear()
            self.metrics.dicos_pending.set(0)
        if dropped:
            log.warning(f"DICOS listener stopped with {dropped} first energies still waiting (dropped)")
        log.info("DICOS listener stopped")

    # receiving -------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            image = dx_from_dataset(ds, name=f"DICOS from {calling}", max_pixels=self.settings.max_pixels)
        except ScanError as exc:
            self.metrics.dicos_received.labels(result="refused").inc()
            log.warning("DICOS C-STORE refused", extra={"calling_ae": calling, "error": str(exc)})
            sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
            return STATUS_NOT_MATCHING_SOP_CLASS if sop_class in DX_SOP_CLASSES else STATUS_CANNOT_UNDERSTAND
        except Exception as exc:  # an undecodable dataset
            self.metrics.dicos_received.labels(result="refused").inc()
            log.warning("DICOS C-STORE unreadable", extra={"calling_ae": calling, "error": repr(exc)})
            return STATUS_CANNOT_UNDERSTAND
        return self._file(image, calling)

    def _file(self, image: DxImage, calling: str) -> int:
        """Keep a first energy, or complete its pair and hand the pair to a worker."""
        with self._lock:
            first = self._pending.pop(image.study_uid, None)
            if first is None:
                if len(self._pending) >= self.settings.dicos_max_pending:
                    self.metrics.dicos_received.labels(result="pending_full").inc()
                    log.warning(
                        "DICOS C-STORE refused: too many first energies waiting",
                        extra={"calling_ae": calling, "study_uid": image.study_uid},
                    )
                    return STATUS_OUT_OF_RESOURCES
                self._pending[image.study_uid] = _Pending(image, time.monotonic(), calling)
                self.metrics.dicos_pending.set(len(self._pending))
                self.metrics.dicos_received.labels(result="accepted").inc()
                return STATUS_SUCCESS
            try:
                pair = dx_pair(first.image, image)
            except ScanError as exc:  # two HIGHs, sizes differ: refuse this one, the first keeps waiting
                self._pending[image.study_uid] = first
                self.metrics.dicos_received.labels(result="refused").inc()
                log.warning(
                    "DICOS C-STORE refused", extra={"calling_ae": calling, "study_uid": image.study_uid,
                                                    "error": str(exc)}
                )  # fmt: skip
                return STATUS_CANNOT_UNDERSTAND
            self.metrics.dicos_pending.set(len(self._pending))
        self.metrics.dicos_received.labels(result="accepted").inc()
        self.metrics.dicos_paired.inc()
        self._workers.submit(self._process, pair, time.perf_counter())
        return STATUS_SUCCESS

    def _sweep(self) -> None:
        """Drop first energies whose second did not arrive within the pairing timeout."""
        timeout = self.settings.dicos_pair_timeout_s
        while not self._stopping.wait(min(1.0, timeout / 4)):
            now = time.monotonic()
            with self._lock:
                expired = [k for k, p in self._pending.items() if now - p.arrived > timeout]
                dropped = [self._pending.pop(k) for k in expired]
                self.metrics.dicos_pending.set(len(self._pending))
            for p in dropped:
                self.metrics.dicos_timed_out.inc()
                log.warning(
                    "DICOS: second energy never arrived; first dropped",
                    extra={
                        "study_uid": p.image.study_uid,
                        "energy": p.image.energy,
                        "calling_ae": p.calling_ae,
                        "waited_s": round(now - p.arrived, 3),
                    },
                )

    # processing ------------------------------------------------------------------------------
    def _process(self, pair: DxPair, t_paired: float) -> None:
        scan_id = uuid.uuid4().hex
        try:
            tdr, response = self._detect(pair, scan_id)
        except Exception as exc:
            reason = "audit" if isinstance(exc, AuditError) else "detection"
            self.metrics.dicos_tdr_failed.labels(reason=reason).inc()
            log.error(
                "DICOS: detection failed, no TDR",
                extra={
                    "scan_id": scan_id,
                    "study_uid": pair.study_uid,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            return
        s = self.settings
        delivered = []
        if s.dicos_output_dir is not None:
            try:
                Path(s.dicos_output_dir).mkdir(parents=True, exist_ok=True)
                (Path(s.dicos_output_dir) / f"{scan_id}.dcm").write_bytes(tdr)
                delivered.append("folder")
            except OSError as exc:
                log.error("DICOS: cannot write TDR", extra={"scan_id": scan_id, "error": str(exc)})
        if s.dicos_dest_host is not None:
            if self._send(tdr, scan_id, pair.study_uid):
                delivered.append("scp")
            else:
                self.metrics.dicos_tdr_failed.labels(reason="destination").inc()
        elif not delivered:
            delivered.append("log")
        for to in delivered:
            self.metrics.dicos_tdr_sent.labels(to=to).inc()
        if delivered:
            self.metrics.dicos_latency.observe(time.perf_counter() - t_paired)
        log.info(
            "DICOS TDR",
            extra={
                "scan_id": scan_id,
                "study_uid": pair.study_uid,
                "alarm": "ALARM" if response.detections else "CLEAR",
                "detections": [(d.class_name, d.score) for d in response.detections],
                "delivered": delivered,
            },
        )

    def _detect(self, pair: DxPair, scan_id: str) -> tuple[bytes, DetectResponse]:
        service, s = self.service, self.settings
        batcher, backend = service.batcher, service.backend
        if batcher is None or backend is None:
            raise RuntimeError("the model is not loaded")
        t0 = time.perf_counter()
        image = convert_scan(pair.high.pixels, pair.low.pixels)
        t1 = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(
            batcher.submit(image, time.monotonic() + s.request_timeout_s), self.loop
        )
        result = future.result(timeout=s.request_timeout_s + 5)
        backend = result.backend  # the model that ran this pair's batch (a switch may have happened since)
        info = backend.info
        threshold = effective_threshold(None, s.score_threshold, info)  # the model's own unless overridden
        detections = detections_from_output(result.output, info, class_ids(info.class_names), threshold)
        for d in detections:
            self.metrics.detections.labels(class_name=d.class_name).inc()
        height, width = pair.high.pixels.shape
        timings = {
            "convert": t1 - t0,
            "queue_wait": result.queue_wait,
            **result.stage_seconds,
            "inference": result.inference_seconds,
            "total": time.perf_counter() - t0,
        }
        response = DetectResponse(
            scan_id=scan_id,
            model=model_summary(info, s.backend, backend.device),
            image=ImageSize(width=width, height=height),
            score_threshold=threshold,
            detections=detections,
            batch_size=result.batch_size,
            timings={k: round(v, 6) for k, v in timings.items()},
        )
        if (
            service.audit is not None
        ):  # no TDR leaves without its audit record (docs/service.md "Audit trail")
            record = audit_record(response, time.perf_counter() - t0, route="dicos")
            try:
                asyncio.run_coroutine_threadsafe(service.audit.append(record), self.loop).result(timeout=60)
            except AuditError as exc:
                self.metrics.audit_failures.labels(reason=exc.reason).inc()
                raise
            self.metrics.audit_records.inc()
        prepared = PreparedScan(pair.high.pixels, pair.low.pixels, image, 0.0, t1 - t0, dicos=pair)
        return tdr_from_response(prepared, response), response

    def _send(self, tdr: bytes, scan_id: str, study_uid: str) -> bool:
        """C-STORE the TDR to the destination: 1 + dicos_retries attempts, backoff doubling each time."""
        import io

        import pydicom
        from pynetdicom import AE

        s = self.settings
        ds = pydicom.dcmread(io.BytesIO(tdr))
        attempts = 1 + s.dicos_retries
        for attempt in range(1, attempts + 1):
            error = None
            ae = AE(ae_title=s.dicos_ae_title)
            ae.add_requested_context(TDR_SOP_CLASS, EXPLICIT_LE)
            ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
            try:
                assoc = ae.associate(s.dicos_dest_host, s.dicos_dest_port, ae_title=s.dicos_dest_ae_title)
                if assoc.is_established:
                    status = assoc.send_c_store(ds)
                    assoc.release()
                    code = getattr(status, "Status", None)
                    if code == STATUS_SUCCESS:
                        return True
                    error = f"C-STORE status {code:#06x}" if code is not None else "no C-STORE response"
                else:
                    error = (
                        "association rejected or aborted" if assoc.is_rejected else "destination unreachable"
                    )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                ae.shutdown()
            log.warning(
                "DICOS: TDR C-STORE failed",
                extra={"scan_id": scan_id, "study_uid": study_uid, "attempt": attempt, "error": error},
            )
            if attempt < attempts and self._stopping.wait(s.dicos_retry_backoff_s * 2 ** (attempt - 1)):
                break  # shutting down: no more waiting
        log.error(
            "DICOS: TDR not delivered after retries",
            extra={
                "scan_id": scan_id,
                "study_uid": study_uid,
                "destination": f"{s.dicos_dest_ae_title}@{s.dicos_dest_host}:{s.dicos_dest_port}",
                "attempts": attempts,
            },
        )
        return False
