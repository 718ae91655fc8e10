"""Memory budget for scans in flight, and the bounded decode pools that run each scan's decode and conversion.

Every scan reserves its declared pixel count (xscreen/scans/peek.py) from one ``MemoryBudget`` BEFORE it is
decoded and keeps the reservation until its answer has been built, so the pixels the service holds decoded,
converted, queued, inferred and rendered at once stay within ``XSCREEN_MAX_INFLIGHT_MPIXELS``. A decode that
outlives its request (a deadline answered 504 while the decoder still runs) keeps its reservation until it
really ends (``Lease.release_when_done``). All methods run on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


class BudgetExhaustedError(Exception):
    """No room in the memory budget before the wait ended (answered 503 memory_budget + Retry-After)."""


class MemoryBudget:
    """A capacity in pixels shared by the scans in flight; waiters are served first come, first served.

    A reservation larger than the whole capacity is admitted alone: it waits until nothing else is held,
    and nothing else is admitted while it is (so the largest memory held is max(capacity, one scan)).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"budget capacity must be at least 1 pixel, got {capacity}")
        self.capacity = int(capacity)
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for _, fut in self._waiters if not fut.done())

    def _fits(self, amount: int) -> bool:
        return self.in_use + amount <= self.capacity or self.in_use == 0

    def _wake(self) -> None:
        """Grant waiters in arrival order while the first one fits (a large one is never overtaken)."""
        while self._waiters:
            amount, fut = self._waiters[0]
            if fut.done():  # given up (timed out or cancelled)
                self._waiters.popleft()
                continue
            if not self._fits(amount):
                return
            self._waiters.popleft()
            self.in_use += amount
            fut.set_result(None)

    def release(self, amount: int) -> None:
        self.in_use -= amount
        assert self.in_use >= 0, "memory budget released more than was reserved"
        self._wake()

    async def acquire(self, amount: int, wait_until: float) -> None:
        """Reserve ``amount`` pixels, waiting until ``wait_until`` (time.monotonic()) at most.

        Raises ``BudgetExhaustedError`` when there is no room by then. A cancelled waiter holds nothing.
        """
        amount = max(int(amount), 0)
        if not self._waiters and self._fits(amount):
            self.in_use += amount
            return
        remaining = wait_until - time.monotonic()
        if remaining <= 0:
            raise BudgetExhaustedError(self._describe(amount))
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), remaining)
        except BaseException as exc:
            granted = fut.done() and not fut.cancelled()
            if granted and isinstance(exc, TimeoutError):
                return  # granted at the very moment the wait ended: keep it
            if granted:
                self.release(amount)
            else:
                fut.cancel()
                self._wake()  # a large waiter that gives up may unblock the smaller ones behind it
            if isinstance(exc, TimeoutError):
                raise BudgetExhaustedError(self._describe(amount)) from None
            raise

    def _describe(self, amount: int) -> str:
        return (
            f"the scans in flight hold {self.in_use / 1e6:.1f} of {self.capacity / 1e6:.1f} megapixels; "
            f"this scan needs {amount / 1e6:.1f}"
        )

    def lease(self) -> Lease:
        return Lease(self)


class Lease:
    """One request's hold on the budget: ``release`` at the end, or hand it to a decode that outlives it.

    ``with budget.lease() as lease: await lease.acquire(n, until); ...`` releases on every exit path
    (answer, error, cancellation) unless ``release_when_done`` handed the reservation over.
    """

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.amount = 0

    async def acquire(self, amount: int, wait_until: float) -> None:
        await self.budget.acquire(amount, wait_until)
        self.amount = max(int(amount), 0)

    def release(self) -> None:
        amount, self.amount = self.amount, 0
        if amount:
            self.budget.release(amount)

    def release_when_done(self, work: concurrent.futures.Future) -> None:
        """Keep the reservation until ``work`` (a decode submitted to a thread pool) has ended or was
        cancelled before it started; the release runs on this event loop."""
        amount, self.amount = self.amount, 0
        if not amount:
            return
        loop = asyncio.get_running_loop()

        def done(_: concurrent.futures.Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is left to budget
                loop.call_soon_threadsafe(self.budget.release, amount)

        work.add_done_callback(done)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class ScanAdmission:
    """Per app: the memory budget and the decode pools (outer: one task per scan; inner: its helpers)."""

    budget: MemoryBudget
    decode_pool: ThreadPoolExecutor  # runs prepare_scan, at most decode_workers scans at once
    helper_pool: ThreadPoolExecutor  # the second image's decode and the conversion's row blocks

    @classmethod
    def from_settings(cls, max_inflight_mpixels: float, decode_workers: int) -> ScanAdmission:
        return cls(
            MemoryBudget(max(1, round(max_inflight_mpixels * 1e6))),
            ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="xscreen-decode"),
            ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="xscreen-decode-helper"),
        )

    def shutdown(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.helper_pool.shutdown(wait=False, cancel_futures=True)
