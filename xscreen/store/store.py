"""``ScanStore``: each answered bag's raw views, answer and model kept on disk and indexed in a database,
within count, byte and age limits; reviewers' verdicts beside them (docs/operations.md "Scan store").

The detection path calls ``put_bag``, which never raises for the store's own trouble (full disk,
unwritable folder, lost database): it returns a ``PutResult`` with the reason, which the service counts.
The console's queries raise ``StoreUnavailable`` when the database cannot be reached.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from xscreen.store import queries, retention, verdicts
from xscreen.store.bag import NewBag, View, check_request_id, encode_bag
from xscreen.store.config import StoreConfig
from xscreen.store.database import (
    DATABASE_ERRORS,
    create_engine,
    describe_db_error,
    migrate,
    transaction,
    unavailable_on_error,
)
from xscreen.store.errors import BagNotFound, StoreError, StoreInputError, StoreUnavailable, os_error_reason
from xscreen.store.files import BagFolders
from xscreen.store.retention import DuplicateBag, Usage

log = logging.getLogger("xscreen.store")


@dataclass(frozen=True)
class PutResult:
    """What ``put_bag`` did: ``stored``, or ``reason`` (one of errors.FAILURE_REASONS) with ``detail``.

    ``usage`` is the store's bags and bytes after the call, when the index could say."""

    stored: bool
    reason: str | None = None
    detail: str = ""
    bytes: int = 0
    evicted: int = 0
    usage: Usage | None = None


def _failed(reason: str, detail: str, usage: Usage | None = None, evicted: int = 0) -> PutResult:
    return PutResult(False, reason, detail, evicted=evicted, usage=usage)


class ScanStore(queries.StoreQueries, verdicts.StoreVerdicts):
    """The scan store of one replica; several replicas may share one folder and one PostgreSQL index.

    Opening creates the folders (0700) and runs the index's migrations; a database that cannot be
    reached then is tried again on the next call (at most every ``config.retry_s``). Thread-safe.
    """

    def __init__(self, config: StoreConfig):
        self.config = config
        self.folders = BagFolders(config.store_dir)
        self.folders.open()  # StoreConfigError: the folder cannot be written
        self.engine = create_engine(config)
        self._ready = False
        self._ready_lock = threading.Lock()
        self._next_try = 0.0
        self._last_error = ""
        try:
            self._ensure_ready()
        except StoreUnavailable as exc:
            log.warning("scan store index not ready; bags are not stored until it is: %s", exc)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def ready(self) -> bool:
        """True once the index has been reached and migrated."""
        return self._ready

    def _ensure_ready(self) -> None:
        """Migrate the index on first contact; StoreUnavailable while it cannot be reached."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if time.monotonic() < self._next_try:
                raise StoreUnavailable(self._last_error)
            try:
                migrate(self.engine)
            except DATABASE_ERRORS as exc:
                self._fail_ready(f"the scan store's database is unavailable: {describe_db_error(exc)}")
            except Exception as exc:  # alembic: e.g. the index is at a revision newer than this code
                self._fail_ready(f"the scan store's index cannot be migrated: {exc}")
            self._ready = True

    def _fail_ready(self, message: str) -> None:
        self._next_try = time.monotonic() + self.config.retry_s
        self._last_error = message
        raise StoreUnavailable(message)

    # -- writing -----------------------------------------------------------------------------------
    def put_bag(self, bag: NewBag) -> PutResult:
        """Store one answered bag: room made first (oldest evicted), files written atomically, then the
        bag made visible. Returns why not instead of raising; nothing half-written is ever visible.

        Blocking (fsyncs and database round trips, tens of ms): call it off the event loop."""
        try:
            return self._put(bag)
        except Exception as exc:  # a bug here must not fail the detection that was answered
            log.exception("scan store: bag not kept")
            return _failed("internal", f"{type(exc).__name__}: {exc}")

    def _put(self, bag: NewBag) -> PutResult:
        try:
            encoded = encode_bag(bag)
        except StoreInputError as exc:
            return _failed("invalid", str(exc))
        size = self.folders.disk_bytes(encoded.files)
        if size > self.config.max_bytes:
            return _failed("too_large", f"{size} bytes > the store's {self.config.max_bytes}")
        try:
            self._ensure_ready()
            with transaction(self.engine, locked=True) as conn:
                retention.check_not_taken(conn, bag.request_id)
                eviction = retention.evict(conn, self.folders, self.config, size, time.time())
                if eviction.error is not None:
                    return _failed(os_error_reason(eviction.error), str(eviction.error), eviction.usage)
                if not eviction.fits:
                    return _failed("no_room", "bags being written hold the room", eviction.usage)
                bag_id = retention.reserve(conn, encoded, size, time.time())
        except DuplicateBag:
            return _failed("duplicate", f"bag {bag.request_id} is stored already")
        except StoreUnavailable as exc:
            return _failed("database", str(exc))
        except (sa.exc.SQLAlchemyError, StoreError, OSError) as exc:  # files: evict() returns their errors
            return _failed("database", describe_db_error(exc))
        return self._write_and_publish(bag.request_id, bag_id, encoded.files, size, eviction)

    def _write_and_publish(self, request_id, bag_id, files, size, eviction) -> PutResult:
        try:
            self.folders.write(request_id, files)
        except OSError as exc:
            self._release(bag_id)
            return _failed(os_error_reason(exc), str(exc), eviction.usage, eviction.evicted)
        try:
            with transaction(self.engine, locked=True) as conn:
                published = retention.publish(conn, bag_id)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            published, detail = False, describe_db_error(exc)
        else:
            detail = "its reservation was evicted as abandoned"
        if not published:
            self._remove_quietly(request_id)
            return _failed("database", detail, eviction.usage, eviction.evicted)
        return PutResult(True, bytes=size, evicted=eviction.evicted, usage=eviction.usage)

    def _release(self, bag_id: int) -> None:
        """Drop a reservation whose files could not be written (left to the stale-write cleanup if the
        database is gone too)."""
        try:
            with transaction(self.engine, write=True) as conn:
                retention.delete_rows(conn, [bag_id])
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            log.warning("scan store: cannot drop a failed bag's reservation: %s", describe_db_error(exc))

    def _remove_quietly(self, request_id: str) -> None:
        try:
            self.folders.remove(request_id)
        except OSError as exc:
            log.warning("scan store: cannot remove the files of unpublished bag %s: %s", request_id, exc)

    # -- retention and purging ------------------------------------------------------------------------
    def prune(self) -> int:
        """Apply the limits now (the age limit above all, when no bag arrives) and remove temporary
        folders of writers that died; the number of bags evicted. StoreUnavailable without the index."""
        self._ensure_ready()
        with unavailable_on_error(), transaction(self.engine, locked=True) as conn:
            eviction = retention.evict(conn, self.folders, self.config, 0, time.time())
        self.folders.remove_leftovers(self.config.stale_write_s)
        if eviction.error is not None:
            raise StoreError(f"cannot delete an evicted bag's files: {eviction.error}")
        return eviction.evicted

    def purge(self, *, before: float | None = None, request_ids: list[str] | None = None) -> int:
        """Delete bags (files, then rows, verdicts included): those with ``request_ids``, or those older
        than the Unix time ``before``, or all of them when neither is given. The number deleted."""
        ids = [check_request_id(r) for r in request_ids] if request_ids is not None else None
        self._ensure_ready()
        done: list[int] = []
        error = None
        with unavailable_on_error(), transaction(self.engine, locked=True) as conn:
            for row in queries.purge_candidates(conn, before, ids):
                try:
                    self.folders.remove(row.request_id)
                except OSError as exc:
                    error = exc
                    break
                done.append(row.id)
            retention.delete_rows(conn, done)
        if error is not None:
            raise StoreError(f"purged {len(done)} bags, then could not delete a bag's files: {error}")
        return len(done)

    def usage(self) -> Usage:
        """Bags (stored and being written) and their bytes, for the xscreen_store_* gauges."""
        self._ensure_ready()
        with unavailable_on_error(), transaction(self.engine) as conn:
            return retention.usage(conn)

    def view(self, request_id: str, index: int) -> View:
        """The raw high and low uint16 images of one view of a stored bag (BagNotFound if none)."""
        bag = self.get_bag(request_id)
        if not 0 <= index < bag.summary.n_views:
            raise BagNotFound(f"bag {request_id} has {bag.summary.n_views} views; there is no view {index}")
        high, low = self.folders.read_view(request_id, index)
        return View(high=high, low=low)


def open_store(config: StoreConfig | None) -> ScanStore | None:
    """The store, or None when no store folder is configured (then nothing is stored anywhere)."""
    if config is None:
        return None
    store = ScanStore(config)
    log.info(config.describe())
    return store
