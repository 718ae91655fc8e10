"""The FastAPI application: lifespan (backend, batcher, warm-up), middleware, error handlers, routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import FastAPI
from starlette.formparsers import MultiPartParser

from xscreen import __version__
from xscreen.inference.backend import InferenceBackend, make_backend
from xscreen.service.auth import ApiKeys
from xscreen.service.batching import MicroBatcher
from xscreen.service.errors import install_error_handlers
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.middleware import ObservabilityMiddleware, UploadGuardMiddleware
from xscreen.service.response import class_ids_for
from xscreen.service.routes import detect, health
from xscreen.service.settings import Settings
from xscreen.service.state import ServiceState

log = logging.getLogger("xscreen.service")

UPLOAD_PATHS = {"/detect", "/render"}


def warmup_scan(size: int = 256) -> np.ndarray:
    """A converted synthetic scan (bright air with a dense block) for the warm-up inference."""
    from xscreen.scans import convert_scan

    high = np.full((size, size), 60000, np.uint16)
    low = np.full((size, size), 58000, np.uint16)
    high[size // 4 : size // 2, size // 4 : 3 * size // 4] = 20000
    low[size // 4 : size // 2, size // 4 : 3 * size // 4] = 9000
    return convert_scan(high, low)


async def _warm_up(service: ServiceState) -> None:
    assert service.batcher is not None
    service.ready_detail = "warming up"
    try:
        await service.batcher.submit(warmup_scan(), time.monotonic() + 600.0)
    except Exception as exc:  # stay alive but not ready: /readyz explains
        service.ready_detail = f"warm-up inference failed: {type(exc).__name__}: {exc}"
        log.error("warm-up inference failed", extra={"error": str(exc)})
        return
    service.ready = True
    service.ready_detail = "ready"
    service.metrics.ready.set(1)
    log.info("ready: warm-up inference done")


def create_app(settings: Settings, backend: InferenceBackend | None = None) -> FastAPI:
    """Build the app. ``backend`` may be given already loaded (``xscreen serve`` does, so a bad weights
    file stops start-up with one clear line before the server binds); otherwise the lifespan loads it."""
    keys = settings.all_api_keys()
    service = ServiceState(settings=settings, metrics=ServiceMetrics(), api_keys=ApiKeys(keys))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal backend
        if backend is None:
            backend = await asyncio.to_thread(make_backend, settings)
        service.backend = backend
        info = backend.info
        service.class_ids = class_ids_for(info.class_names)
        service.metrics.model_info.labels(
            info.name, info.version, info.sha256, settings.backend, backend.device, info.precision
        ).set(1)
        service.batcher = MicroBatcher(
            backend,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=service.metrics,
        )
        await service.batcher.start()
        if not keys:
            log.warning(
                "no API keys configured: /detect and /render are open (loopback host %s)", settings.host
            )
        log.info(
            "model loaded",
            extra={
                "model": info.name,
                "version": info.version,
                "sha256": info.sha256,
                "device": backend.device,
                "backend": settings.backend,
                "api_keys": len(keys),
            },
        )
        dicos = None
        if settings.dicos_port is not None:  # the DICOS listener shares this batcher (docs/dicos.md)
            from xscreen.service.dicos_listener import DicosListener

            dicos = DicosListener(service, asyncio.get_running_loop())
            await asyncio.to_thread(dicos.start)
        warm = None
        if settings.warmup:
            warm = asyncio.create_task(_warm_up(service))
        else:
            service.ready, service.ready_detail = True, "ready (no warm-up)"
            service.metrics.ready.set(1)
        try:
            yield
        finally:
            service.ready, service.ready_detail = False, "shutting down"
            service.metrics.ready.set(0)
            if warm is not None and not warm.done():
                warm.cancel()
            if dicos is not None:  # off the loop: its workers still need the batcher
                await asyncio.to_thread(dicos.stop)
            await service.batcher.stop(drain_timeout_s=settings.graceful_timeout_s)
            log.info("stopped")

    app = FastAPI(
        title="xscreen",
        version=__version__,
        description="Threat detection on dual-energy X-ray scans: ATSS + Label-aware Mechanism.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.api_keys = service.api_keys
    install_error_handlers(app)
    # The upload guard holds the whole body (<= max_upload_bytes) in memory before the form is parsed,
    # so spilling a part over Starlette's 1 MB default to a temporary file saves no memory; it only
    # adds file writes and reads per scan at 1024 x 1024 pixels and up (docs/service.md, benchmark).
    # Class-wide; never lowered, so several apps in one process keep the largest limit.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)
    app.include_router(detect.router)
    app.include_router(health.router)
    # Added last = outermost: observability sees every answer, including the guard's refusals.
    app.add_middleware(
        UploadGuardMiddleware,
        paths=UPLOAD_PATHS,
        api_keys=service.api_keys,
        max_upload_bytes=settings.max_upload_bytes,
    )
    known = UPLOAD_PATHS | {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}
    app.add_middleware(ObservabilityMiddleware, metrics=service.metrics, known_paths=known)
    return app
