"""The scan store's errors, and the reasons ``put_bag`` gives when it stores nothing (metric labels)."""

from __future__ import annotations

import errno

from xscreen.errors import XscreenError

# Why ``ScanStore.put_bag`` stored nothing; each is a label value of xscreen_store_failures_total.
#   invalid     the bag itself is unusable (request id, views, answer): a caller's bug
#   duplicate   a bag with this request id is already stored
#   too_large   the one bag is larger than the whole byte limit
#   no_room     bags still being written by other replicas hold the room it needs
#   disk_full   ENOSPC / EDQUOT / EFBIG while writing its files
#   unwritable  EACCES / EPERM / EROFS: the store folder cannot be written
#   io_error    any other OSError (EIO, ...)
#   database    the index cannot be reached or written (the bag's files are removed again)
#   internal    a bug in the store (logged with its traceback)
FAILURE_REASONS = (
    "invalid", "duplicate", "too_large", "no_room",
    "disk_full", "unwritable", "io_error", "database", "internal",
)  # fmt: skip

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_reason(exc: OSError) -> str:
    """The failure reason of an OSError raised while writing or removing a bag's files."""
    if exc.errno in _DISK_FULL:
        return "disk_full"
    if exc.errno in _UNWRITABLE:
        return "unwritable"
    return "io_error"


class StoreError(XscreenError):
    """Base of the scan store's errors."""


class StoreConfigError(StoreError):
    """The store cannot run with its configuration (folder, database URL, limits): raised at start."""


class StoreUnavailable(StoreError):
    """The index database cannot be reached or refused the query; the console shows this message."""


class StoreInputError(StoreError):
    """A caller's value the store refuses: a request id unfit for a path, a bad verdict, box or view."""


class BagNotFound(StoreError):
    """No stored bag (or view, detection, verdict) has this id; it may have been evicted."""
