"""The DICOS network listener: a pynetdicom SCP that groups the DX of a bag (one study: views of a HIGH and
a LOW DX each), runs detection through the HTTP app's batcher and C-STOREs one TDR per bag to a destination
(docs/dicos.md, "Network" and "Bags").

pynetdicom runs each association in its own thread. A C-STORE handler checks a DX from its encoded bytes
(never ``event.dataset``), writes it to the spool (service/dicos_spool.py, fsync'd) and only then answers
0000; grouping is by Study Instance UID, then Series Instance UID (service/dicos_bags.py says when a bag is
complete: its view count reached, its sender's association released, or a quiet wait). Two worker threads
take complete bags through detection (the app's ``MicroBatcher`` on the event loop: same model, queue and
limits as HTTP; a bag's views in one batch) and delivery; a full queue or a destination down puts the bag
back to wait, and only a delivered TDR removes it from the spool.
P-DATA bytes are counted as they arrive, so an over-size dataset aborts its association before it is whole.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import logging
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from xscreen.inference.response import BagResponse
from xscreen.scans import ScanError
from xscreen.scans.dicos.dx import DxImage, dx_from_encoded
from xscreen.scans.dicos.files import (
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
)
from xscreen.scans.dicos.tdr import read_tdr
from xscreen.service.audit import AuditError
from xscreen.service.batching import BatcherStoppedError, DeadlineExceededError, QueueFullError
from xscreen.service.dicos_bags import RECOVERED, Bag, BagRules, shape_only
from xscreen.service.dicos_delivery import send_tdr
from xscreen.service.dicos_detect import ModelNotLoadedError, detect_bag, load_bag
from xscreen.service.dicos_limits import MAX_PDU_BYTES, ByteLimits, bounded_request_handler
from xscreen.service.dicos_spool import TDR_PREFIX, Spool, SpoolError, read_half, write_durably
from xscreen.service.state import ServiceState

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


def dataset_limit(settings) -> int:
    """One C-STORE dataset's encoded bytes at most: the setting, or 2 x max_pixels + 1 MiB."""
    if settings.dicos_max_dataset_bytes is not None:
        return settings.dicos_max_dataset_bytes
    return 2 * settings.max_pixels + 1024**2


def register_dicos_uids() -> None:
    """Make the DICOS storage SOP classes known to pynetdicom (it ships without them)."""
    from pynetdicom import sop_class
    from pynetdicom.service_class import StorageServiceClass

    for uid, keyword in _KEYWORDS.items():
        if not hasattr(sop_class, keyword):
            sop_class.register_uid(uid, keyword, StorageServiceClass)


_TRANSIENT = (
    QueueFullError,
    DeadlineExceededError,
    BatcherStoppedError,
    AuditError,
    SpoolError,
    ModelNotLoadedError,
    TimeoutError,  # no answer from the event loop in time (concurrent.futures)
)


@dataclass
class _Job:
    """A complete, spooled bag on its way to a delivered TDR."""

    study: Path
    study_uid: str
    calling_ae: str
    t_complete: float  # time.perf_counter()
    order: list[str] = field(default_factory=list)  # SOP Instance UIDs in arrival order (the views' order)
    scan_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tdr: bytes | None = None
    tries: int = 0  # transient setbacks so far (queue full, destination down, ...)
    failures: int = 0  # detection errors that may be the scan's
    delivered: set[str] = field(default_factory=set)


class DicosListener:
    """Start with ``start()`` inside the app's lifespan (after the batcher), stop with ``stop()``."""

    def __init__(self, service: ServiceState, loop: asyncio.AbstractEventLoop):
        self.service, self.loop = service, loop
        self.settings, self.metrics = service.settings, service.metrics
        self.rules = BagRules.from_settings(self.settings)
        self._bags: OrderedDict[str, Bag] = OrderedDict()  # by Study Instance UID: bags not complete yet
        self._senders: dict[object, set[str]] = {}  # open association -> studies it sent DX of
        self._active: set[Path] = set()  # spool folders of bags in detection or delivery
        self._writing: set[Path] = set()  # spool folders a C-STORE is writing to (outside the lock)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._due: list[tuple[float, int, _Job]] = []  # heap of (time.monotonic() due, seq, job)
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.spool: Spool | None = None
        self._temporary_spool = False
        self.dataset_limit = dataset_limit(self.settings)
        self._limits = ByteLimits(self.dataset_limit, self.settings.dicos_max_association_bytes, self.metrics)

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self._open_spool()
        self._recover()
        for i in range(2):
            self._start_thread(self._work, f"xscreen-dicos-{i}")
        self._start_thread(self._sweep, "xscreen-dicos-sweep")
        self._server = self._start_server()
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
                "spool": str(self.spool.root),
                "max_dataset_bytes": self.dataset_limit,
                "max_association_bytes": s.dicos_max_association_bytes,
            },
        )

    def _start_thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_server(self):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification
        from pynetdicom.transport import ThreadedAssociationServer

        register_dicos_uids()
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
        s = self.settings
        ae = AE(ae_title=s.dicos_ae_title)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.require_calling_aet = list(s.dicos_allowed_aets)
        for uid in DX_SOP_CLASSES:
            ae.add_supported_context(uid, SCP_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._limits.on_pdu),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        server = ae.make_server(
            (s.dicos_host, s.dicos_port),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=bounded_request_handler(self.metrics),
        )
        # registered with its AE as AE.start_server does: the server's shutdown() removes it from there
        ae._servers.append(server)
        self._start_thread(server.serve_forever, "xscreen-dicos-server")
        return server

    def _open_spool(self) -> None:
        if self.service.dicos_spool is not None:  # opened (and locked) by create_app
            self.spool = self.service.dicos_spool
            self.metrics.dicos_spool_bytes.set(self.spool.bytes)
            return
        root = self.settings.dicos_spool_dir
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="xscreen-dicos-spool-"))
            self._temporary_spool = True
            log.warning(
                f"DICOS listener: no XSCREEN_DICOS_SPOOL_DIR: acknowledged scans are kept in {root}, "
                "which the next start does not read (not durable across restarts)"
            )
        self.spool = Spool(root)
        self.metrics.dicos_spool_bytes.set(self.spool.bytes)

    def stop(self) -> None:
        """Refuse new associations, let the workers finish their step; what is left stays in the spool."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.settings.request_timeout_s + 30)
        with self._lock:
            waiting = len(self._bags)
            self._bags.clear()
            self._senders.clear()
            self.metrics.dicos_pending.set(0)
        left = len(self._due)
        if waiting or left:
            log.warning(
                f"DICOS listener stopped with {waiting} bags not complete and {left} complete in the spool "
                f"{self.spool.root}" + (" (temporary: not read again)" if self._temporary_spool else "")
            )
        if self.spool is not None:
            self.spool.close()
        log.info("DICOS listener stopped")

    # receiving -------------------------------------------------------------------------------
    def _refuse(self, result: str, status: int, message: str, **extra) -> int:
        self.metrics.dicos_received.labels(result=result).inc()
        log.warning(message, extra=extra)
        return status

    def _on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        encoded = event.request.DataSet  # a BytesIO: the dataset as encoded, never decoded by pynetdicom
        if encoded is None:
            return self._refuse("refused", STATUS_CANNOT_UNDERSTAND, "DICOS C-STORE without a dataset")
        size = encoded.seek(0, io.SEEK_END)
        if self._limits.exceeded(event.assoc) or size > self.dataset_limit:
            return self._refuse(
                "too_large",
                STATUS_OUT_OF_RESOURCES,
                "DICOS C-STORE refused: dataset over the size limit",
                calling_ae=calling,
                bytes=size,
            )
        if self.spool.bytes + size > self.settings.dicos_spool_max_bytes:
            return self._refuse(
                "spool_full",
                STATUS_OUT_OF_RESOURCES,
                "DICOS C-STORE refused: spool full",
                calling_ae=calling,
                spool_bytes=self.spool.bytes,
            )
        raw, syntax = encoded.getvalue(), str(event.context.transfer_syntax)
        try:
            image = dx_from_encoded(
                raw, syntax, name=f"DICOS from {calling}", max_pixels=self.settings.max_pixels
            )
        except ScanError as exc:
            sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
            status = (
                STATUS_NOT_MATCHING_SOP_CLASS if sop_class in DX_SOP_CLASSES else STATUS_CANNOT_UNDERSTAND
            )
            return self._refuse(
                "refused", status, "DICOS C-STORE refused", calling_ae=calling, error=str(exc)
            )
        try:
            return self._file(image, raw, syntax, calling, event.assoc)
        except SpoolError as exc:
            return self._refuse(
                "spool_error",
                STATUS_OUT_OF_RESOURCES,
                "DICOS C-STORE refused: cannot spool",
                calling_ae=calling,
                error=str(exc),
            )

    def _file(self, image: DxImage, raw: bytes, syntax: str, calling: str, assoc) -> int:
        """Spool a checked DX (durable before the answer), add it to its study's bag, and queue the bag
        when this DX completes it (XSCREEN_DICOS_BAG_VIEWS)."""
        uid = image.study_uid
        study, instance = self.spool.study_dir(uid), image.sop_instance_uid or uuid.uuid4().hex
        with self._lock:
            refused = self._check(image, study, instance, calling)
            if refused == STATUS_SUCCESS and uid in self._bags:  # a DX sent again: its release counts too
                self._senders.setdefault(assoc, set()).add(uid)
            if refused is not None:
                return refused
            self._writing.add(study)  # written outside the lock: other studies' C-STOREs go on meanwhile
        try:
            self.spool.put_half(uid, image.sop_class_uid, instance, raw, syntax, calling)
        finally:
            with self._lock:
                self._writing.discard(study)
        self.metrics.dicos_spool_bytes.set(self.spool.bytes)
        self.metrics.dicos_received.labels(result="accepted").inc()
        now = time.monotonic()
        with self._lock:
            bag = self._bags.get(uid)
            if bag is None:  # no completion can take a study that is being written (see _check)
                bag = self._bags[uid] = Bag(uid, study, calling, now)
            bag.add(image, now)
            self._senders.setdefault(assoc, set()).add(uid)
            rule = self.rules.complete(bag, now)
            job = self._complete(bag, rule) if rule is not None else None
            self.metrics.dicos_pending.set(len(self._bags))
        if job is not None:
            self._schedule(job, 0.0)
        return STATUS_SUCCESS

    def _check(self, image: DxImage, study: Path, instance: str, calling: str) -> int | None:
        """The C-STORE status of a DX that is not to be spooled, or None (called under the lock)."""
        uid = image.study_uid
        if self.spool.half_path(study, instance).exists():
            self.metrics.dicos_received.labels(result="duplicate").inc()
            return STATUS_SUCCESS  # sent again (our answer was lost?): it is spooled already
        if study in self._writing:  # another DX of the study is being written right now: send again later
            return self._refuse(
                "busy",
                STATUS_OUT_OF_RESOURCES,
                "DICOS C-STORE refused: study busy",
                calling_ae=calling,
                study_uid=uid,
            )
        if study in self._active:
            return self._refuse(
                "refused",
                STATUS_CANNOT_UNDERSTAND,
                "DICOS C-STORE refused: the study's bag is complete",
                calling_ae=calling,
                study_uid=uid,
            )
        bag = self._bags.get(uid)
        if bag is None and len(self._bags) + len(self._writing) >= self.settings.dicos_max_pending:
            return self._refuse(
                "pending_full",
                STATUS_OUT_OF_RESOURCES,
                "DICOS C-STORE refused: too many bags waiting to be complete",
                calling_ae=calling,
                study_uid=uid,
            )
        refusal = self.rules.refusal(bag, image)  # a third DX of a view, two HIGHs, too many views
        if refusal is not None:
            result, why = refusal
            return self._refuse(
                result,
                STATUS_CANNOT_UNDERSTAND,
                "DICOS C-STORE refused",
                calling_ae=calling,
                study_uid=uid,
                series_uid=image.series_uid,
                error=why,
            )
        return None

    def _complete(self, bag: Bag, rule: str) -> _Job:
        """Take a complete bag off the waiting list (under the lock): its job, for ``_schedule``."""
        self._bags.pop(bag.study_uid, None)
        self._active.add(bag.study)
        self.metrics.dicos_bags_complete.labels(rule=rule).inc()
        views = len(bag.views())
        self.metrics.dicos_paired.inc(views)
        log.info(
            "DICOS bag complete",
            extra={"study_uid": bag.study_uid, "rule": rule, "views": views, "dx": len(bag.images)},
        )
        return _Job(bag.study, bag.study_uid, bag.calling_ae, time.perf_counter(), order=bag.order())

    def _on_released(self, event) -> None:
        """An association was released: the bags it sent DX of are complete if each view has both energies
        (without XSCREEN_DICOS_BAG_VIEWS; a study being written to waits for the sweep)."""
        now, jobs = time.monotonic(), []
        with self._lock:
            for uid in sorted(self._senders.pop(event.assoc, ())):
                bag = self._bags.get(uid)
                if bag is None or bag.study in self._writing:
                    continue
                rule = self.rules.complete(bag, now, released=True)
                if rule is not None:
                    jobs.append(self._complete(bag, rule))
            self.metrics.dicos_pending.set(len(self._bags))
        for job in jobs:
            self._schedule(job, 0.0)

    def _on_closed(self, event) -> None:
        """An association aborted or its connection closed: forget it (its bags wait, see ``_sweep``)."""
        with self._lock:
            self._senders.pop(event.assoc, None)

    def _sweep(self) -> None:
        """Complete the bags whose wait is over; move those still missing an energy (or a view) after the
        pairing timeout to rejected/."""
        s = self.settings
        tick = min(1.0, s.dicos_pair_timeout_s / 4, s.dicos_bag_wait_s / 4)
        while not self._stopping.wait(tick):
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        jobs, expired = [], []
        with self._lock:
            for bag in list(self._bags.values()):
                if bag.study in self._writing:  # a DX of it is being written: the next sweep sees it
                    continue
                rule = self.rules.complete(bag, now)
                why = None if rule is not None else self.rules.expired(bag, now)
                if rule is not None:
                    jobs.append(self._complete(bag, rule))
                elif why is not None:
                    del self._bags[bag.study_uid]
                    self._reject(bag.study, "timeout", why)
                    expired.append((bag, why))
            self.metrics.dicos_pending.set(len(self._bags))
        for job in jobs:
            self._schedule(job, 0.0)
        for bag, why in expired:
            self.metrics.dicos_timed_out.inc()
            log.warning(
                "DICOS: bag not complete in time; moved to rejected/",
                extra={
                    "study_uid": bag.study_uid,
                    "calling_ae": bag.calling_ae,
                    "dx": len(bag.images),
                    "detail": why,
                    "waited_s": round(now - bag.last, 3),
                },
            )

    def _reject(self, study: Path, reason: str, detail: str) -> None:
        self.metrics.dicos_rejected.labels(reason=reason).inc()
        try:
            target = self.spool.reject(study, f"{reason}: {detail}")
        except SpoolError as exc:
            log.error("DICOS: cannot move a study to rejected/", extra={"error": str(exc)})
            return
        finally:
            self._active.discard(study)
        self.metrics.dicos_spool_bytes.set(self.spool.bytes)
        log.warning("DICOS: study rejected", extra={"spool": str(target), "reason": reason, "detail": detail})

    # restart ---------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Take up what the spool holds: undelivered TDRs are delivered, complete bags without a TDR are
        detected, the others wait again for their missing DX (their timeout counts from the last one)."""
        delivering = complete = waiting = 0
        for study in self.spool.studies():
            halves, tdr = self.spool.halves(study), self.spool.tdr(study)
            try:
                if tdr is not None and halves:
                    job = _Job(study, "", read_half(halves[0]).calling_ae, time.perf_counter())
                    job.scan_id, job.tdr = tdr.stem.removeprefix(TDR_PREFIX), tdr.read_bytes()
                    job.study_uid = read_tdr(job.tdr).study_uid
                    self._active.add(study)
                    self._schedule(job, 0.0)
                    delivering += 1
                elif not halves:
                    self._reject(
                        study, "spool", f"unexpected content: {sorted(p.name for p in study.iterdir())}"
                    )
                elif self._recover_bag(study, halves):
                    complete += 1
                else:
                    waiting += 1
            except (ScanError, OSError, ValueError, KeyError, AttributeError) as exc:
                self._reject(study, "scan", f"cannot read spooled DX: {exc}")
        self.metrics.dicos_pending.set(len(self._bags))
        if delivering or complete or waiting:
            log.info(
                "DICOS spool recovered",
                extra={"tdrs": delivering, "complete_bags": complete, "waiting_bags": waiting},
            )

    def _recover_bag(self, study: Path, halves: list[Path]) -> bool:
        """A spooled study's DX back as its bag, in arrival order (the files' modification times): queued
        when complete (every view paired, and with XSCREEN_DICOS_BAG_VIEWS that many views), else waiting."""
        by_arrival = sorted(halves, key=lambda p: (p.stat().st_mtime_ns, p.name))
        spooled = [read_half(p) for p in by_arrival]
        age = max(0.0, time.time() - by_arrival[-1].stat().st_mtime)
        images = [
            dx_from_encoded(h.raw, h.transfer_syntax, max_pixels=self.settings.max_pixels) for h in spooled
        ]
        bag = Bag(images[0].study_uid, study, spooled[0].calling_ae, time.monotonic() - age)
        bag.images = [shape_only(image) for image in images]
        # its senders are gone: a bag whose every view is paired counts as released
        if self.rules.complete(bag, time.monotonic(), released=True) is not None:
            self._schedule(self._complete(bag, RECOVERED), 0.0)
            return True
        self._bags[bag.study_uid] = bag
        return False

    # processing ------------------------------------------------------------------------------
    def _schedule(self, job: _Job, delay: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), job))
            self._wake.notify()

    def _backoff(self, tries: int) -> float:
        s = self.settings
        return min(s.dicos_retry_max_backoff_s, s.dicos_retry_backoff_s * 2 ** min(tries, 30))

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        job = heapq.heappop(self._due)[2]
                        break
                    self._wake.wait(timeout=(self._due[0][0] - now) if self._due else None)
                else:
                    return
            try:
                self._run(job)
            except Exception as exc:  # never lose a spooled job to a bug: it waits and is tried again
                log.exception("DICOS: unexpected error; bag kept in the spool", extra={"error": repr(exc)})
                job.tries += 1
                self._schedule(job, self._backoff(job.tries))

    def _run(self, job: _Job) -> None:
        """One step of a spooled bag: detection (if no TDR yet), then delivery; retried or rejected."""
        if job.tdr is None and not self._detect_step(job):
            return
        s = self.settings
        targets = {"folder"} if s.dicos_output_dir is not None else set()
        targets |= {"scp"} if s.dicos_dest_host is not None else set()
        if "folder" in targets - job.delivered and self._write_folder(job):
            job.delivered.add("folder")
        if "scp" in targets - job.delivered:
            if send_tdr(s, job.tdr, job.scan_id, job.study_uid, self._stopping):
                job.delivered.add("scp")
            else:
                self.metrics.dicos_tdr_failed.labels(reason="destination").inc()
        if not targets:
            job.delivered.add("log")
        if targets - job.delivered:
            job.tries += 1
            self.metrics.dicos_retries.labels(stage="delivery").inc()
            if not self._stopping.is_set():
                self._schedule(job, s.dicos_retry_max_backoff_s)
            return
        with self._lock:
            self.spool.done(job.study)
            self._active.discard(job.study)
        self.metrics.dicos_spool_bytes.set(self.spool.bytes)
        for to in job.delivered:
            self.metrics.dicos_tdr_sent.labels(to=to).inc()
        self.metrics.dicos_latency.observe(time.perf_counter() - job.t_complete)
        log.info(
            "DICOS TDR delivered",
            extra={"scan_id": job.scan_id, "study_uid": job.study_uid, "delivered": sorted(job.delivered)},
        )

    def _detect_step(self, job: _Job) -> bool:
        """Run detection and spool the TDR; False when the job was put back to wait or rejected."""
        try:
            pairs = load_bag(
                self.spool,
                job.study,
                job.order,
                max_pixels=self.settings.max_pixels,
                check_energy=self.settings.check_energy_order,
            )
            job.study_uid = pairs[0].study_uid
            tdr, response = detect_bag(self.service, self.loop, pairs, job.scan_id, job.calling_ae)
            self.spool.put_tdr(job.study, job.scan_id, tdr)
        except _TRANSIENT as exc:  # queue full, deadline, audit or spool trouble: wait, then try again
            job.tries += 1
            self.metrics.dicos_retries.labels(stage="detection").inc()
            log.info("DICOS: detection deferred", extra={"study_uid": job.study_uid, "error": str(exc)})
            if not self._stopping.is_set():
                self._schedule(job, self._backoff(job.tries))
            return False
        except (ScanError, OSError) as exc:
            self._reject(job.study, "scan", str(exc))
            return False
        except Exception as exc:  # the backend raised on this bag's batch: maybe the scan, maybe not
            job.failures += 1
            self.metrics.dicos_tdr_failed.labels(reason="detection").inc()
            log.error(
                "DICOS: detection failed",
                extra={
                    "scan_id": job.scan_id,
                    "study_uid": job.study_uid,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            if job.failures > self.settings.dicos_retries:
                self._reject(job.study, "detection", f"{type(exc).__name__}: {exc}")
            elif not self._stopping.is_set():
                self._schedule(job, self._backoff(job.failures))
            return False
        job.tdr = tdr
        self.metrics.dicos_spool_bytes.set(self.spool.bytes)
        views = response.views if isinstance(response, BagResponse) else [response]
        log.info(
            "DICOS TDR",
            extra={
                "scan_id": job.scan_id,
                "study_uid": job.study_uid,
                "alarm": "ALARM" if response.alarm else "CLEAR",
                "views": len(views),
                "detections": [(d.class_name, d.score) for v in views for d in v.detections],
            },
        )
        return True

    def _write_folder(self, job: _Job) -> bool:
        folder = Path(self.settings.dicos_output_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_durably(folder / f"{job.scan_id}.dcm", [job.tdr])
            return True
        except OSError as exc:
            log.error("DICOS: cannot write TDR", extra={"scan_id": job.scan_id, "error": str(exc)})
            return False
