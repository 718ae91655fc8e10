"""The DICOS listener's spool: every acknowledged DX half kept on disk, fsync'd, until its TDR is delivered.

Layout (docs/dicos.md "Durability"): one folder per study, named by a hash of its Study Instance UID,
holding one DICOM Part 10 file per received energy (the C-STORE's encoded dataset bytes as received,
behind a file meta group that records the transfer syntax and, as Source Application Entity Title, the
calling AE) and, once detection has run, ``tdr-<scan_id>.dcm``. ``rejected/`` holds studies that will not
be processed, each with ``reason.txt``. A ``.lock`` file (``flock``) keeps a second process off the folder.

Every file is written to a temporary name, fsync'd, renamed, and its folder fsync'd, so a file either
exists whole or not at all after a crash (``kill -9``, power loss).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from xscreen.errors import XscreenError

REJECTED = "rejected"
TDR_PREFIX = "tdr-"
_TMP_PREFIX = ".tmp-"


class SpoolError(XscreenError):
    """The spool folder cannot be opened, locked or written."""


@dataclass(frozen=True)
class SpooledHalf:
    """One energy as it was received: encoded dataset bytes and how to read them."""

    path: Path
    raw: bytes
    transfer_syntax: str
    calling_ae: str


def _key(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, chunks: list[bytes]) -> int:
    """Write ``chunks`` to ``path`` via a temporary name: fsync the file, rename, fsync the folder."""
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                size += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return size


def _file_meta(transfer_syntax: str, sop_class: str, sop_instance: str, calling_ae: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.SourceApplicationEntityTitle = calling_ae[:16]
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


def read_half(path: Path) -> SpooledHalf:
    """A spooled energy back: its dataset bytes (after the file meta group), transfer syntax, calling AE."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, (0002,0000) element
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read()
    ae = str(meta.get("SourceApplicationEntityTitle", "") or "").strip()
    return SpooledHalf(path, raw, str(meta.TransferSyntaxUID), ae)


class Spool:
    """The spool folder, locked for this process; thread-safe for distinct studies."""

    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            (self.root / REJECTED).mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / ".lock", "a+b")  # noqa: SIM115 (held until close())
        except OSError as exc:
            raise SpoolError(f"cannot open DICOS spool {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolError(f"DICOS spool {self.root} is in use by another process") from None
        self._bytes_lock = threading.Lock()
        self.bytes = sum(self._size(d) for d in self.studies())

    def _count(self, delta: int) -> None:
        with self._bytes_lock:
            self.bytes += delta

    def close(self) -> None:
        self._lock.close()

    # layout ------------------------------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        return self.root / _key(study_uid)

    def studies(self) -> list[Path]:
        """Study folders, oldest first (interrupted writes' temporary files are removed)."""
        found = []
        for d in self.root.iterdir():
            if d.is_dir() and d.name != REJECTED:
                for tmp in d.glob(f"{_TMP_PREFIX}*"):
                    tmp.unlink(missing_ok=True)
                found.append(d)
        return sorted(found, key=lambda d: d.stat().st_mtime)

    @staticmethod
    def half_path(study: Path, sop_instance_uid: str) -> Path:
        return study / f"{_key(sop_instance_uid)}.dcm"

    @staticmethod
    def halves(study: Path) -> list[Path]:
        return sorted(p for p in study.glob("*.dcm") if not p.name.startswith(TDR_PREFIX))

    @staticmethod
    def tdr(study: Path) -> Path | None:
        return next(iter(sorted(study.glob(f"{TDR_PREFIX}*.dcm"))), None)

    @staticmethod
    def _size(study: Path) -> int:
        return sum(p.stat().st_size for p in study.iterdir() if p.is_file())

    # writing -------------------------------------------------------------------------------------
    def put_half(
        self,
        study_uid: str,
        sop_class: str,
        sop_instance: str,
        raw: bytes,
        transfer_syntax: str,
        calling_ae: str,
    ) -> Path:
        """Keep one received energy (durable when this returns)."""
        study = self.study_dir(study_uid)
        new = not study.exists()
        try:
            study.mkdir(exist_ok=True)
            if new:
                _fsync_dir(self.root)
            path = self.half_path(study, sop_instance)
            meta = _file_meta(transfer_syntax, sop_class, sop_instance, calling_ae)
            self._count(write_durably(path, [meta, raw]))
        except OSError as exc:
            raise SpoolError(f"cannot write to DICOS spool {study}: {exc.strerror or exc}") from None
        return path

    def put_tdr(self, study: Path, scan_id: str, tdr: bytes) -> Path:
        path = study / f"{TDR_PREFIX}{scan_id}.dcm"
        try:
            self._count(write_durably(path, [tdr]))
        except OSError as exc:
            raise SpoolError(f"cannot write to DICOS spool {study}: {exc.strerror or exc}") from None
        return path

    def done(self, study: Path) -> None:
        """The study's TDR is delivered: forget it."""
        with contextlib.suppress(OSError):
            self._count(-self._size(study))
        shutil.rmtree(study, ignore_errors=True)
        with contextlib.suppress(OSError):
            _fsync_dir(self.root)

    def reject(self, study: Path, reason: str) -> Path | None:
        """Move a study that will not be processed to rejected/, with ``reason.txt``; None if it is gone."""
        if not study.exists():
            return None
        size = self._size(study)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.root / REJECTED / f"{stamp}-{study.name}-{uuid.uuid4().hex[:6]}"
        try:
            write_durably(study / "reason.txt", [reason.encode() + b"\n"])
            os.replace(study, target)
            _fsync_dir(self.root / REJECTED)
            _fsync_dir(self.root)
        except OSError as exc:
            raise SpoolError(f"cannot move {study} to {target}: {exc.strerror or exc}") from None
        self._count(-size)
        return target
