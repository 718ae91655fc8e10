"""The bag folders on disk: written atomically (temporary folder, fsync, rename), modes 0700 and 0600.

STORE_DIR/bags/<request id>/view<i>_high.npy, view<i>_low.npy, bag.json
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

from xscreen.store.bag import check_request_id, view_file_names
from xscreen.store.errors import BagNotFound, StoreConfigError

log = logging.getLogger("xscreen.store")
DIR_MODE = 0o700
FILE_MODE = 0o600
TEMP_PREFIX = ".tmp-"  # a bag being written
DELETE_PREFIX = ".del-"  # a bag being deleted


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """A new file with exactly mode 0600 (whatever the umask), written whole and fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if missing and make it mode 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _tighten(path: Path) -> None:
    """The store folder 0700 if this user may change it (a volume's root may belong to root: then its
    bags/ folder, 0700 and ours, is what keeps the bags private)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError:
        log.warning("cannot make the store folder %s mode 0700 (not its owner); bags/ in it is", path)


class BagFolders:
    """One folder per bag under ``STORE_DIR/bags``, named by its request id."""

    def __init__(self, store_dir: Path):
        self.root = Path(store_dir) / "bags"
        self.block = 4096

    def open(self) -> None:
        """Create the folders (0700) and check that files can be made in them: StoreConfigError if not."""
        try:
            _tighten(self.root.parent)
            private_dir(self.root)
            probe = self.root / f"{TEMP_PREFIX}probe-{secrets.token_hex(4)}"
            _write_file(probe, b"")
            probe.unlink()
            self.block = os.statvfs(self.root).f_frsize or 4096
        except OSError as exc:
            raise StoreConfigError(
                f"cannot write in the store folder {self.root}: {exc.strerror or exc} "
                f"(uid {os.geteuid()} needs a writable folder)"
            ) from None

    def path(self, request_id: str) -> Path:
        return self.root / check_request_id(request_id)

    def disk_bytes(self, files: dict[str, bytes]) -> int:
        """What a bag takes on disk: each file rounded up to whole blocks, plus one block for its folder."""
        whole = sum(-(-len(data) // self.block) * self.block for data in files.values())
        return whole + self.block

    def write(self, request_id: str, files: dict[str, bytes]) -> None:
        """Write the bag's files into a temporary folder, fsync each, then rename it into place.

        Any OSError (full disk, no permission) removes the temporary folder and is raised; the bag's
        folder then does not exist, so no bag is ever seen half written.
        """
        final = self.path(request_id)
        temp = self.root / f"{TEMP_PREFIX}{request_id}-{secrets.token_hex(4)}"
        try:
            os.mkdir(temp, DIR_MODE)
            os.chmod(temp, DIR_MODE)
            for name, data in files.items():
                _write_file(temp / name, data)
            _fsync_dir(temp)
            if final.exists():  # an orphan of a crash: the caller holds this id's reservation
                shutil.rmtree(final)
            os.rename(temp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def remove(self, request_id: str) -> None:
        """Delete a bag's folder; a missing one is not an error.

        The folder is first renamed out of the way in one step, so a folder that cannot be deleted (an
        unwritable store: the OSError is raised) is left whole, never half emptied."""
        doomed = self.root / f"{DELETE_PREFIX}{request_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.path(request_id), doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed)

    def remove_leftovers(self, older_than_s: float) -> int:
        """Delete what writers and deleters that died left: temporary folders older than ``older_than_s``
        (a live writer's is younger) and every folder renamed for deletion."""
        removed = 0
        cutoff = time.time() - older_than_s
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                temp = (
                    entry.name.startswith(TEMP_PREFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff
                )
                if temp or entry.name.startswith(DELETE_PREFIX):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed

    def read_view(self, request_id: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (high, low) uint16 images of view ``index``, exactly as stored."""
        folder = self.path(request_id)
        arrays = []
        for name in view_file_names(index):
            try:
                arrays.append(np.load(folder / name, allow_pickle=False))
            except FileNotFoundError:
                raise BagNotFound(f"bag {request_id} has no view {index} on disk (evicted?)") from None
        return arrays[0], arrays[1]
