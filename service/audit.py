"""The audit trail: one JSON line per answered scan, flushed and fsync'd before the answer is sent.

A dedicated writer thread takes every record waiting, writes them, flushes and fsyncs once (group
commit), then resolves each record's future on the event loop; the route answers only after its own
record is on disk. The file is rotated by size (``audit.jsonl`` -> ``audit.jsonl.1`` ... ``.N``).
A failed write (full or read-only disk) fails the records it held: the route answers 503
``audit_unavailable`` (fail closed, docs/service.md "Audit trail").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import json
import logging
import os
import queue
import stat
import threading
from pathlib import Path

from xscreen.errors import XscreenError

log = logging.getLogger("xscreen.service.audit")


class AuditError(XscreenError):
    """The audit file cannot be opened or written (the message names the path and the OS error)."""

    def __init__(self, message: str, reason: str = "other"):
        super().__init__(message)
        self.reason = reason  # errno name (ENOSPC, EROFS, EACCES, EIO...) or "other"


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "other")


class AuditLog:
    """Append-only JSON-lines file with size rotation, written by one thread; ``append`` awaits fsync."""

    def __init__(self, path: Path, max_bytes: int, keep: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._file = None
        self.records_written = 0
        self._open()  # at start-up: a path that cannot be opened stops the service with one line

    # file --------------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open, closed in close())
            self._cut_torn_tail()
        except OSError as exc:
            raise AuditError(
                f"cannot open audit file {self.path}: {exc.strerror or exc}", _reason(exc)
            ) from None

    def _cut_torn_tail(self) -> None:
        """Cut a partial last line, so the next record starts on a line of its own.

        A process killed inside the writer's ``write`` (SIGKILL, power loss) can leave the start of a
        batch in the file without its end. No request waited on that batch had been answered (answers
        wait for the fsync after the whole write), so the fragment records nothing the site was told;
        appended to, it would glue the next record onto it and make that one unparseable.
        """
        if not self._rotatable():
            return
        fd = self._file.fileno()  # opened for appending only: read through a second descriptor
        size = os.fstat(fd).st_size
        if size == 0:
            return
        rfd = os.open(self.path, os.O_RDONLY)
        try:
            if os.pread(rfd, 1, size - 1) == b"\n":
                return
            end = size
            while end > 0:  # find the last newline, reading backwards in blocks
                start = max(0, end - 65536)
                newline = os.pread(rfd, end - start, start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
        finally:
            os.close(rfd)
        try:
            os.ftruncate(fd, end)
        except OSError as exc:  # an append-only file (chattr +a) cannot be cut: end the fragment instead
            self._file.write(b"\n")
            os.fsync(fd)
            log.warning(
                "audit file ended in a partial record (the service stopped inside a write, before "
                "answering) that cannot be cut (%s); ended it with a newline: skip that line when reading",
                exc.strerror or exc,
                extra={"audit_path": str(self.path), "partial_bytes": size - end},
            )
            return
        os.fsync(fd)
        log.warning(
            "audit file ended in a partial record (the service stopped inside a write, before answering); "
            "cut it off",
            extra={"audit_path": str(self.path), "bytes_cut": size - end},
        )

    def _rotatable(self) -> bool:
        """Only regular files are rotated (never /dev/... or a pipe)."""
        try:
            return stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        except OSError:
            return False

    def _rotate_if_needed(self, incoming: int) -> None:
        if not self._rotatable():
            return
        size = os.fstat(self._file.fileno()).st_size
        if size == 0 or size + incoming <= self.max_bytes:
            return
        self._file.close()
        self._file = None
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the renames and the new file survive a crash
        finally:
            os.close(dir_fd)
        log.info("audit file rotated", extra={"audit_path": str(self.path)})

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        self._rotate_if_needed(len(data))
        regular = self._rotatable()
        start = os.fstat(self._file.fileno()).st_size if regular else 0
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written:]
            os.fsync(self._file.fileno())
        except OSError:
            if regular:  # leave no partial line behind for the next record to be glued to
                with contextlib.suppress(OSError):
                    os.ftruncate(self._file.fileno(), start)
            raise

    # writer thread -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xscreen-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:  # group commit: everything waiting goes in one write + fsync
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            data = b"".join(line for line, _, _ in batch)
            error: AuditError | None = None
            try:
                self._write(data)
                self.records_written += len(batch)
            except OSError as exc:
                error = AuditError(f"audit file {self.path}: {exc.strerror or exc}", _reason(exc))
                if self._file is not None:  # reopen next time: the failed write may have left a partial line
                    with contextlib.suppress(OSError):
                        self._file.close()
                    self._file = None
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_resolve, future, error)

    async def append(self, record: dict) -> None:
        """Queue ``record`` and return once it is on disk (fsync'd); AuditError when it is not."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((line, future, loop))
        # shield: a cancelled request still lets the writer resolve the future without an error
        await asyncio.shield(future)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
        if self._file is not None:
            self._file.close()
            self._file = None


def _resolve(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _detections(found) -> list[dict]:
    return [
        {
            "class_name": d.class_name,
            "class_id": d.class_id,
            "group": d.group,
            "score": d.score,
            "box": [d.box.x1, d.box.y1, d.box.x2, d.box.y2],
        }
        for d in found
    ]


def audit_record(
    response,
    latency_s: float,
    *,
    route: str,
    request_id: str | None = None,
    trace_id: str | None = None,
    key_id: str | None = None,
    calling_ae: str | None = None,
) -> dict:
    """The audit line of one answered bag (a ``DetectResponse``, or a ``BagResponse`` of several views):
    what the machine said, with which model. One record per bag: its views are listed in it."""
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "scan_id": response.scan_id,
        "request_id": request_id,
        "trace_id": trace_id,
        "route": route,
        "key_id": key_id,
        "model": {
            "name": response.model.name,
            "version": response.model.version,
            "sha256": response.model.sha256,
        },
        "score_threshold": response.score_threshold,
        "alarm": response.alarm,
    }
    views = getattr(response, "views", None)
    if views is None:
        record["image"] = {"width": response.image.width, "height": response.image.height}
        record["detections"] = _detections(response.detections)
    else:
        record["views"] = [
            {
                "view": v.view,
                "source": v.source.model_dump(exclude_none=True),
                "image": {"width": v.image.width, "height": v.image.height},
                "alarm": v.alarm,
                "detections": _detections(v.detections),
            }
            for v in views
        ]
    record["latency_s"] = round(latency_s, 6)
    if calling_ae is not None:
        record["calling_ae"] = calling_ae  # DICOS: the scanner that sent the bag
    return record
