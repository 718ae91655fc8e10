"""The per-app service state (settings, backend, batcher, metrics) and its typed FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from xscreen.inference.backend import InferenceBackend
from xscreen.service.auth import ApiKeys
from xscreen.service.batching import MicroBatcher
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    api_keys: ApiKeys
    backend: InferenceBackend | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    ready_detail: str = "loading weights"
    class_ids: tuple[int, ...] = field(default_factory=tuple)


async def get_service(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function in its thread pool, a thread hop on every request
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]
