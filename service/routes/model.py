"""``GET /model``: the model being served, its classes, config and the input limits."""

from __future__ import annotations

import datetime

from fastapi import APIRouter, Depends

from xscreen.inference.pipeline import class_ids, resolve_threshold
from xscreen.service.auth import require_api_key
from xscreen.service.errors import ApiError
from xscreen.service.model_switch import model_config
from xscreen.service.schemas import ErrorResponse, InputLimits, ModelClass, ModelResponse
from xscreen.service.state import ServiceDep, ServiceState

router = APIRouter(tags=["model"])


def model_response(service: ServiceState) -> ModelResponse:
    active = service.models.active
    if active is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "5"})
    backend, settings = active.backend, service.settings
    info = backend.info
    ids = class_ids(info.class_names)
    return ModelResponse(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        model_name=active.model_name,
        file=active.path.name,
        backend=settings.backend,
        device=backend.device,
        precision=info.precision,
        score_threshold=resolve_threshold(None, settings.score_threshold, info),
        classes=[
            ModelClass(class_id=i, class_name=n, group=g)
            for i, n, g in zip(ids, info.class_names, info.groups, strict=True)
        ],
        limits=InputLimits(
            max_pixels=settings.max_pixels,
            max_upload_bytes=settings.max_upload_bytes,
            formats=settings.formats,
        ),
        config=model_config(backend),
        loaded_at=datetime.datetime.fromtimestamp(active.loaded_at, datetime.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
    )


@router.get(
    "/model",
    response_model=ModelResponse,
    dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorResponse, "description": "missing or wrong API key"},
        503: {"model": ErrorResponse, "description": "the model is not loaded yet"},
    },
    summary="The model being served: name, version, sha256, classes, config, input limits",
)
async def get_model(service: ServiceDep) -> ModelResponse:
    return model_response(service)
