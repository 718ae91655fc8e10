"""The micro-batching queue with the real torch backend: batch sizes, per-batch failures, bounds, deadline."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from xscreen.inference.backend import InferenceBackend, TorchBackend
from xscreen.scans import convert_scan
from xscreen.service.batching import BatchFailedError, DeadlineExceededError, MicroBatcher, QueueFullError
from xscreen.service.metrics import ServiceMetrics

pytestmark = pytest.mark.timeout(300)


class Recording:
    """Delegates to a real backend; records batch sizes; fails batches holding a marked image; can hold."""

    def __init__(self, backend: TorchBackend):
        self.backend = backend
        self.info, self.device = backend.info, backend.device
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = False

    def predict(self, images):
        self.gate.wait(60)
        self.sizes.append(len(images))
        if any(im[0, 0, 0] < 0 for im in images):  # a converted scan is never negative: fault injection
            raise RuntimeError("injected failure")
        self.running = True
        try:
            return self.backend.predict(images)
        finally:
            self.running = False


@pytest.fixture(scope="module")
def backend(demo):
    return TorchBackend(demo.weights, "cpu"), demo


def _images(demo, n: int) -> list[np.ndarray]:
    base = [convert_scan(s.high, s.low) for s in demo.scans]
    return [base[i % len(base)].copy() for i in range(n)]


def _batcher(rec, metrics=None, **kw) -> MicroBatcher:
    opts = {"max_batch_size": 2, "max_queue_delay_s": 0.2, "queue_size": 8, **kw}
    return MicroBatcher(rec, metrics=metrics, **opts)


def test_backend_satisfies_the_interface(backend):
    torch_backend, _ = backend
    assert isinstance(torch_backend, InferenceBackend)
    assert len(torch_backend.info.class_names) == len(torch_backend.info.groups) == 12


def test_batches_fill_up_and_answers_equal_single_scan_answers(backend):
    torch_backend, demo = backend
    images = _images(demo, 5)
    alone = [torch_backend.predict([im])[0][0] for im in images[:2]]
    rec = Recording(torch_backend)
    metrics = ServiceMetrics()

    async def go():
        b = _batcher(rec, metrics)
        await b.start()
        results = await asyncio.gather(*(b.submit(im, time.monotonic() + 120) for im in images))
        await b.stop()
        return results

    results = asyncio.run(go())
    assert rec.sizes == [2, 2, 1]
    assert [r.batch_size for r in results] == [2, 2, 2, 2, 1]
    for r, ref in zip(results[:2], alone, strict=True):  # a scan's answer does not depend on its batch
        assert r.output["labels"].tolist() == ref["labels"].tolist()
        np.testing.assert_allclose(r.output["scores"], ref["scores"], atol=1e-4)
        np.testing.assert_allclose(r.output["boxes"], ref["boxes"], atol=0.05)
    text = metrics.render().decode()
    assert "xscreen_batch_size_count 3.0" in text and "xscreen_batch_size_sum 5.0" in text


def test_a_failing_batch_fails_only_its_own_scans(backend):
    torch_backend, demo = backend
    images = _images(demo, 4)
    images[0][0, 0, 0] = -1.0
    rec = Recording(torch_backend)
    metrics = ServiceMetrics()

    async def go():
        b = _batcher(rec, metrics)
        await b.start()
        out = await asyncio.gather(
            *(b.submit(im, time.monotonic() + 120) for im in images), return_exceptions=True
        )
        # the worker survived: the next scan is answered
        after = await b.submit(images[1], time.monotonic() + 120)
        await b.stop()
        return out, after

    out, after = asyncio.run(go())
    assert isinstance(out[0], BatchFailedError) and isinstance(out[1], BatchFailedError)
    assert not isinstance(out[2], Exception) and not isinstance(out[3], Exception)
    assert after.output["scores"].shape[0] == out[3].output["scores"].shape[0]
    assert "xscreen_batch_failures_total 1.0" in metrics.render().decode()


def test_queue_bound_and_deadline(backend):
    torch_backend, demo = backend
    images = _images(demo, 5)
    rec = Recording(torch_backend)
    rec.gate.clear()  # hold the worker inside predict

    async def go():
        b = _batcher(rec, max_batch_size=1, queue_size=2, max_queue_delay_s=0.0)
        await b.start()
        first = asyncio.create_task(b.submit(images[0], time.monotonic() + 120))
        await asyncio.sleep(0.05)
        while b.depth:  # until the worker has taken the first scan (and is held inside predict)
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(b.submit(im, time.monotonic() + 120)) for im in images[1:3]]
        await asyncio.sleep(0.05)
        assert b.depth == 2 and b.full()
        with pytest.raises(QueueFullError):
            await b.submit(images[3], time.monotonic() + 120)
        rec.gate.set()
        results = await asyncio.gather(first, *queued)
        with pytest.raises(DeadlineExceededError):  # a deadline already gone is answered, not queued forever
            await b.submit(images[4], time.monotonic() + 0.0)
        await b.stop()
        return results

    try:
        results = asyncio.run(go())
    finally:
        rec.gate.set()
    assert len(results) == 3 and rec.sizes[:3] == [1, 1, 1]


def test_event_loop_runs_while_the_model_works(backend):
    torch_backend, demo = backend
    rec = Recording(torch_backend)
    ticks_during_inference = 0

    async def ticker(stop: asyncio.Event):
        nonlocal ticks_during_inference
        while not stop.is_set():
            await asyncio.sleep(0.002)
            ticks_during_inference += rec.running

    async def go():
        b = _batcher(rec)
        await b.start()
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        await b.submit(_images(demo, 1)[0], time.monotonic() + 120)
        stop.set()
        await tick
        await b.stop()

    asyncio.run(go())
    assert ticks_during_inference > 0  # inference runs in the executor thread, never on the loop
