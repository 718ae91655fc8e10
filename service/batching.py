"""Dynamic micro-batching: a bounded asyncio queue feeding one worker that runs the backend in a thread.

The event loop never runs inference itself: the worker hands each batch to a one-thread executor
(``run_in_executor``). A batch closes when it holds ``max_batch_size`` scans, when ``max_queue_delay``
has passed since its first scan arrived, or at once when no other request is still decoding its scan
(so a lone scan pays no batching delay). An exception in a batch fails that batch's scans only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from xscreen.inference.backend import InferenceBackend
from xscreen.inference.pipeline import ModelRun, run_model
from xscreen.service.metrics import ServiceMetrics

log = logging.getLogger("xscreen.service.batching")


class QueueFullError(Exception):
    """The queue holds ``queue_size`` scans already (answered with 503 + Retry-After)."""


class DeadlineExceededError(Exception):
    """The scan was not answered before its deadline (answered with 504)."""


class BatchFailedError(Exception):
    """The backend raised on the batch that held this scan (a server fault, 500)."""


class BatcherStoppedError(Exception):
    """The service is shutting down and takes no new scans (503)."""


@dataclass
class _Job:
    images: list[np.ndarray]  # one scan, or the views of one bag: never split across batches
    future: asyncio.Future  # its list of ModelRun, one per image
    deadline: float  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(
        self,
        backend: InferenceBackend,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        queue_size: int,
        metrics: ServiceMetrics | None = None,
    ):
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._incoming = 0  # requests past admission whose scan is still being read/decoded
        self._held: _Job | None = None  # a bag that did not fit the last batch: first in the next
        self.batches_run = 0

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xscreen-infer")
        self._worker = asyncio.create_task(self._run(), name="xscreen-batcher")
        if self.metrics:
            self.metrics.queue_capacity.set(self.queue_size)
            self.metrics.queue_depth.set(0)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Take no new scans, answer the queued ones (up to ``drain_timeout_s``), then stop the worker."""
        self._stopping = True
        if self._queue is not None:
            end = time.monotonic() + drain_timeout_s
            while (not self._queue.empty() or self._held is not None) and time.monotonic() < end:
                await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:  # anything left after the drain window
            left = [self._held] if self._held is not None else []
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            for job in left:
                if not job.future.done():
                    job.future.set_exception(BatcherStoppedError("service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # submission ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def full(self) -> bool:
        return self._queue is not None and self._queue.full()

    @contextlib.contextmanager
    def incoming(self):
        """Mark a request whose scan is being decoded: a forming batch waits for it (up to the delay)."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, image: np.ndarray, deadline: float) -> ModelRun:
        """Queue one converted scan and wait for its result until ``deadline`` (time.monotonic())."""
        return (await self.submit_bag([image], deadline))[0]

    async def submit_bag(self, images: list[np.ndarray], deadline: float) -> list[ModelRun]:
        """Queue the views of one bag to run in one batch (with other scans when there is room; a bag of
        more than max_batch_size views runs alone) and wait for their results until ``deadline``."""
        if self._queue is None or self._stopping:
            raise BatcherStoppedError("service is not accepting scans")
        loop = asyncio.get_running_loop()
        job = _Job(images=list(images), future=loop.create_future(), deadline=deadline)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"queue full ({self.queue_size} scans waiting)") from None
        self._set_depth()
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(remaining, 0.0))
        except TimeoutError:
            job.future.cancel()  # the worker skips it if it has not started yet
            raise DeadlineExceededError("no result before the request deadline") from None

    # worker ----------------------------------------------------------------------------------
    def _set_depth(self) -> None:
        if self.metrics and self._queue is not None:
            self.metrics.queue_depth.set(self._queue.qsize())

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        first, self._held = self._held or await self._queue.get(), None
        batch, images = [first], len(first.images)
        close_at = first.enqueued + self.max_queue_delay_s
        while images < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = close_at - time.monotonic()
                # A lone scan is not held back waiting for company that is not on its way: wait only
                # while other requests are still decoding their scans.
                if remaining <= 0 or self._incoming == 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout=remaining)
                except TimeoutError:
                    break
            if images + len(job.images) > self.max_batch_size:
                self._held = job  # a bag is never split: it opens the next batch
                break
            batch.append(job)
            images += len(job.images)
        self._set_depth()
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._run_batch(batch)
            finally:
                # the worker keeps no scan while it waits for the next batch (each holds ~12 bytes a pixel)
                batch.clear()

    async def _run_batch(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        live = []
        for job in batch:
            if job.future.done():  # timed out / cancelled while queued
                continue
            if now >= job.deadline:
                job.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            live.append(job)
        if not live:
            return
        waits = [now - job.enqueued for job in live]
        backend = self.backend  # a model switch assigns self.backend; this batch keeps its own
        images = [image for job in live for image in job.images]
        try:
            runs = await loop.run_in_executor(self._executor, run_model, backend, images)
        except asyncio.CancelledError:
            for job in live:
                if not job.future.done():
                    job.future.set_exception(BatcherStoppedError("service is shutting down"))
            raise
        except Exception as exc:  # one failing batch fails only its own scans
            log.exception("inference failed on a batch of %d scans", len(live))
            if self.metrics:
                self.metrics.batch_failures.inc()
            for job in live:
                if not job.future.done():
                    job.future.set_exception(BatchFailedError(f"inference failed: {type(exc).__name__}"))
            return
        self.batches_run += 1
        if self.metrics:
            self.metrics.batch_size.observe(len(images))
            for wait in waits:
                self.metrics.queue_wait.observe(wait)
            for stage, seconds in runs[0].stage_seconds.items():
                self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
        start = 0
        for job, wait in zip(live, waits, strict=True):
            share = runs[start : start + len(job.images)]
            start += len(job.images)
            if not job.future.done():
                job.future.set_result([dataclasses.replace(run, queue_wait=wait) for run in share])
