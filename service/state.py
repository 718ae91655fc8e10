"""The per-app service state (settings, models, batcher, audit, metrics) and its typed FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from xscreen.inference.backend import InferenceBackend
from xscreen.service.audit import AuditLog
from xscreen.service.auth import ApiKeys
from xscreen.service.batching import MicroBatcher
from xscreen.service.budget import ScanAdmission
from xscreen.service.dicos_spool import Spool
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.model_switch import ModelManager
from xscreen.service.scan_store import StoreWriter
from xscreen.service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    api_keys: ApiKeys
    models: ModelManager
    admin_keys: ApiKeys | None = None
    audit: AuditLog | None = None
    admission: ScanAdmission | None = None  # memory budget and decode pools (docs/service.md)
    dicos_spool: Spool | None = None  # opened (and locked) by create_app, before binding
    store: StoreWriter | None = None  # the scan store (XSCREEN_STORE_DIR), docs/operations.md
    batcher: MicroBatcher | None = None
    ready: bool = False
    ready_detail: str = "loading weights"

    @property
    def backend(self) -> InferenceBackend | None:
        """The model serving now (None before the lifespan loaded it)."""
        return self.models.active.backend if self.models.active is not None else None


async def get_service(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function in its thread pool, a thread hop on every request
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]
