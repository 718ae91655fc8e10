"""The FastAPI application: lifespan (backend, batcher, warm-up, audit, SIGHUP), middleware, error handlers,
routers, the OpenAPI document with its two viewers, and the package's static files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.formparsers import MultiPartParser

from xscreen import __version__
from xscreen.inference.backend import InferenceBackend, make_backend
from xscreen.service.audit import AuditLog
from xscreen.service.auth import ApiKeys
from xscreen.service.batching import MicroBatcher
from xscreen.service.budget import ScanAdmission
from xscreen.service.console import actions as console_actions
from xscreen.service.console import pages as console_pages
from xscreen.service.console.deps import ConsoleState
from xscreen.service.console.security import ConsoleError
from xscreen.service.dicos_spool import Spool
from xscreen.service.errors import install_error_handlers
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.middleware import (
    GuardPolicy,
    ObservabilityMiddleware,
    RequestGuardMiddleware,
    RouteRule,
)
from xscreen.service.model_switch import ModelManager, warmup_scan
from xscreen.service.routes import admin, detect, health, model
from xscreen.service.routes.docs import OPENAPI_PATH, STATIC_PATH, docs_router, static_files
from xscreen.service.scan_store import StoreWriter
from xscreen.service.settings import Settings
from xscreen.service.state import ServiceState

log = logging.getLogger("xscreen.service")

UPLOAD_PATHS = {"/detect", "/render"}
SCAN_KEY_PATHS = {"/model"}
__all__ = ["create_app", "warmup_scan"]


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


def _install_sighup(service: ServiceState) -> bool:
    """SIGHUP re-reads the model selection file (main thread only: an in-thread test server has none)."""
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        if service.batcher is not None:
            loop.create_task(service.models.reload_selection(service.batcher), name="xscreen-sighup")

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return False
    return True


def create_app(settings: Settings, backend: InferenceBackend | None = None) -> FastAPI:
    """Build the app. ``backend`` may be given already loaded (``xscreen serve`` does, so a bad weights
    file stops start-up with one clear line before the server binds); otherwise the lifespan loads it.
    An audit file that cannot be opened raises AuditError here (before binding, one line too)."""
    keys = settings.all_api_keys()
    service = _service_state(settings, keys)
    app = FastAPI(
        title="xscreen",
        version=__version__,
        description="Threat detection on dual-energy X-ray scans: ATSS + Label-aware Mechanism.",
        lifespan=_lifespan(service, backend, keys),
        openapi_url=None,  # served by routes.docs: the scan key rule with protect_docs, pages from /static
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.api_keys = service.api_keys
    app.state.admin_keys = service.admin_keys
    install_error_handlers(app)
    # The request guard holds the whole body (<= max_upload_bytes) in memory before the form is parsed,
    # so spilling a part over Starlette's 1 MB default to a temporary file saves no memory; it only
    # adds file writes and reads per scan at 1024 x 1024 pixels and up (docs/service.md, benchmark).
    # Class-wide; never lowered, so several apps in one process keep the largest limit.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)
    app.include_router(detect.router)
    app.include_router(model.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(docs_router(protect_openapi=settings.protect_docs))
    app.state.console = ConsoleState.create(service)  # docs/console.md
    app.include_router(console_pages.router)
    app.include_router(console_actions.router)
    app.add_exception_handler(ConsoleError, console_pages.console_error)
    app.mount(STATIC_PATH, static_files(), name="static")
    # Added last = outermost: observability sees every answer, including the guard's refusals.
    app.add_middleware(
        RequestGuardMiddleware,
        policy=guard_policy(settings),
        api_keys=service.api_keys,
        admin_keys=service.admin_keys,
    )
    known = UPLOAD_PATHS | SCAN_KEY_PATHS | {"/healthz", "/readyz", "/metrics", "/admin/model"}
    known |= {OPENAPI_PATH, "/docs", "/redoc"}
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=service.metrics,
        known_paths=known,
        known_prefixes=(STATIC_PATH + "/",),
    )
    return app


def _service_state(settings: Settings, keys: list[str]) -> ServiceState:
    """The app's state before start-up: keys, metrics, model manager, audit log, scan admission, spool."""
    metrics = ServiceMetrics()
    service = ServiceState(
        settings=settings,
        metrics=metrics,
        api_keys=ApiKeys(keys),
        admin_keys=ApiKeys(settings.all_admin_keys()),
        models=ModelManager(settings, metrics),
    )
    if settings.audit_path is not None:
        service.audit = AuditLog(settings.audit_path, settings.audit_max_bytes, settings.audit_keep)
    service.admission = ScanAdmission.from_settings(settings.max_inflight_mpixels, settings.decode_workers)
    metrics.budget_capacity.set(service.admission.budget.capacity)
    metrics.budget_in_use.set_function(lambda: service.admission.budget.in_use)
    if settings.dicos_port is not None and settings.dicos_spool_dir is not None:
        service.dicos_spool = Spool(settings.dicos_spool_dir)  # a locked spool: one line before binding
    service.store = StoreWriter.open(settings, metrics)  # an unwritable store: one line before binding
    return service


def _lifespan(service: ServiceState, backend: InferenceBackend | None, keys: list[str]):
    """The app's lifespan: load the backend (unless given), start the batcher, audit log, SIGHUP
    handler, DICOS listener and warm-up; on shutdown stop them in reverse, draining the batcher."""
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal backend
        if backend is None:
            backend = await asyncio.to_thread(make_backend, settings)
        hup = await _start_serving(service, backend)
        _log_started(service, backend, keys, hup)
        dicos = None
        if settings.dicos_port is not None:  # the DICOS listener shares this batcher (docs/dicos.md)
            from xscreen.service.dicos_listener import DicosListener

            dicos = DicosListener(service, asyncio.get_running_loop())
            await asyncio.to_thread(dicos.start)
        if service.store is not None:
            service.store.start_pruning()
        app.state.console.start(service)
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
            app.state.console.stop()
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if warm is not None and not warm.done():
                warm.cancel()
            if dicos is not None:  # off the loop: its workers still need the batcher
                await asyncio.to_thread(dicos.stop)
            await service.batcher.stop(drain_timeout_s=settings.graceful_timeout_s)
            if service.audit is not None:
                service.audit.close()
            if service.store is not None:
                await asyncio.to_thread(service.store.close)
            service.admission.shutdown()
            log.info("stopped")

    return lifespan


async def _start_serving(service: ServiceState, backend: InferenceBackend) -> bool:
    """Activate ``backend``, start the batcher and the audit log; True if SIGHUP reloads the model."""
    settings = service.settings
    service.models.activate(backend)
    service.batcher = MicroBatcher(
        backend,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        queue_size=settings.queue_size,
        metrics=service.metrics,
    )
    await service.batcher.start()
    if service.audit is not None:
        service.audit.start()
    return _install_sighup(service)


def _log_started(service: ServiceState, backend: InferenceBackend, keys: list[str], hup: bool) -> None:
    """The start-up lines: a warning when no API keys are set, then what was loaded and how."""
    settings = service.settings
    if not keys:
        log.warning(
            "no API keys configured: /detect, /render, /model and /openapi.json are open (loopback host %s)",
            settings.host,
        )
    info = backend.info
    log.info(
        "model loaded",
        extra={
            "model": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "model_name": settings.model_name,
            "device": backend.device,
            "backend": settings.backend,
            "api_keys": len(keys),
            "admin_keys": len(service.admin_keys or ()),
            "audit_path": str(settings.audit_path) if settings.audit_path else None,
            "sighup_reload": hup,
        },
    )


def guard_policy(settings: Settings) -> GuardPolicy:
    """The request guard's table. Scan key: the uploads (``max_upload_bytes``), /model and, with
    ``protect_docs`` and ``protect_metrics``, the OpenAPI document and /metrics; admin key: anything
    under /admin/ (a 404 there too: no body is read before the key); /console and below: no key at all
    (reviewer sessions only, service/console; any Authorization header is refused); every other body
    (the /docs and /redoc pages and /static are open) gets ``max_json_bytes``. A route that depends on
    require_api_key or require_admin_key but is missing here answers 500 (auth._checked_by_guard), never
    serves unchecked."""
    small = settings.max_json_bytes
    upload = RouteRule("scan", settings.max_upload_bytes, upload=True)
    paths = {path: upload for path in UPLOAD_PATHS}
    scan_key = SCAN_KEY_PATHS | ({"/metrics"} if settings.protect_metrics else set())
    scan_key |= {OPENAPI_PATH} if settings.protect_docs else set()
    paths |= {path: RouteRule("scan", small) for path in scan_key}
    return GuardPolicy(
        paths=paths,
        prefixes={"/admin/": RouteRule("admin", small), "/console/": RouteRule("console", small)},
        default=RouteRule("open", small),
        body_idle_timeout_s=settings.body_idle_timeout_s,
        upload_timeout_s=settings.upload_timeout_s,
    )
