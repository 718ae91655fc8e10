"""Answered bags into the scan store (xscreen.store, docs/operations.md "Scan store"), off the answer's path.

A bag is handed over once its answer and audit record exist; one writer thread stores it (raw views, the
answer, the model) while the answer leaves. A store that fails, is full or falls behind never fails or
delays a detection: the bag is not kept, and ``xscreen_store_failures_total{reason}`` counts it (``backlog``:
more than ``BACKLOG`` bags were already waiting for the writer, each holding its raw views in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from xscreen.inference.pipeline import PreparedScan
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.settings import Settings
from xscreen.store import ModelIdentity, NewBag, ScanStore, View, open_store, summarise_answer
from xscreen.store.bag import REQUEST_ID_RE

log = logging.getLogger("xscreen.service.store")

BACKLOG = 8  # bags waiting for the writer at most
PRUNE_EVERY_S = 60.0  # the age limit is applied at least this often, with no bag arriving


def store_key(request_id: str | None, trace_id: str | None, fallback: str) -> str:
    """The bag's key in the store: the audit record's request id when the store's folder names allow it
    ([A-Za-z0-9_-], at most 64), else its trace id (32 hex), else ``fallback`` (a DICOS scan id)."""
    for key in (request_id, trace_id, fallback):
        if key and REQUEST_ID_RE.fullmatch(key):
            return key
    raise ValueError(f"no usable store key among {request_id!r}, {trace_id!r}, {fallback!r}")


class StoreWriter:
    """``keep()`` a bag from any thread or the event loop; ``close()`` waits for those handed over."""

    def __init__(self, store: ScanStore, metrics: ServiceMetrics):
        self.store, self.metrics = store, metrics
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xscreen-store")
        self._waiting = 0
        self._lock = threading.Lock()
        self._pruner: asyncio.Task | None = None

    @classmethod
    def open(cls, settings: Settings, metrics: ServiceMetrics) -> StoreWriter | None:
        """The writer, or None when XSCREEN_STORE_DIR is unset (then nothing is stored anywhere). An
        unwritable folder or a bad setting raises StoreConfigError: one line, before the server binds."""
        store = open_store(settings.store_config())
        if store is None:
            return None
        writer = cls(store, metrics)
        writer._set_usage()
        return writer

    def keep(self, key: str, scans: list[PreparedScan], answer: dict, source: str) -> None:
        """Hand the bag over to the writer (never blocks; counted and dropped when the backlog is full)."""
        with self._lock:
            if self._waiting >= BACKLOG:
                self.metrics.store_failures.labels(reason="backlog").inc()
                return
            self._waiting += 1
        alarm, classes, top = summarise_answer(answer)
        model = answer["model"]
        bag = NewBag(
            request_id=key,
            views=[View(s.high, s.low) for s in scans],
            answer=answer,
            model=ModelIdentity(model["name"], model["version"], model["sha256"]),
            source=source[:128],
            alarm=alarm,
            classes=classes,
            top_score=top,
        )
        self._pool.submit(self._put, bag)

    def _put(self, bag: NewBag) -> None:
        try:
            result = self.store.put_bag(bag)  # never raises (xscreen.store)
        finally:
            with self._lock:
                self._waiting -= 1
        if not result.stored:
            self.metrics.store_failures.labels(reason=result.reason or "internal").inc()
            log.warning(
                "scan store: bag not kept",
                extra={"request_id": bag.request_id, "reason": result.reason, "detail": result.detail},
            )
        if result.usage is not None:
            self.metrics.store_bags.set(result.usage.bags)
            self.metrics.store_bytes.set(result.usage.bytes)

    def _set_usage(self) -> None:
        with contextlib.suppress(Exception):  # an unreachable index: the gauges wait for the next bag
            usage = self.store.usage()
            self.metrics.store_bags.set(usage.bags)
            self.metrics.store_bytes.set(usage.bytes)

    def start_pruning(self) -> None:
        """Apply the age limit every PRUNE_EVERY_S on the running loop (bags also prune as they arrive)."""

        async def prune() -> None:
            while True:
                await asyncio.sleep(PRUNE_EVERY_S)
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(self._pool, self.store.prune)
                    self._set_usage()

        self._pruner = asyncio.get_running_loop().create_task(prune(), name="xscreen-store-prune")

    def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        self._pool.shutdown(wait=True)  # the bags handed over are written (or counted) first
        self.store.close()
