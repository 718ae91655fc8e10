"""``POST /admin/model``: switch the served model without downtime (admin key; service/model_switch.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from xscreen.service.auth import require_admin_key
from xscreen.service.errors import ApiError
from xscreen.service.model_switch import ModelSwitchError
from xscreen.service.routes.model import model_response
from xscreen.service.schemas import ErrorResponse, ModelSwitchRequest, ModelSwitchResponse
from xscreen.service.state import ServiceDep

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post(
    "/admin/model",
    response_model=ModelSwitchResponse,
    responses={
        401: {"model": ErrorResponse, "description": "missing or wrong admin key"},
        403: {"model": ErrorResponse, "description": "no admin key configured (admin_disabled)"},
        404: {"model": ErrorResponse, "description": "no such model in XSCREEN_MODELS_DIR"},
        409: {"model": ErrorResponse, "description": "another switch is still loading"},
        422: {
            "model": ErrorResponse,
            "description": "sha256 mismatch, corrupt file, other architecture or classes, failed warm-up; "
            "or an invalid body",
        },
        503: {"model": ErrorResponse, "description": "the service is not serving yet"},
    },
    summary="Load a model from the models directory, warm it up, then serve it (the old one until then)",
)
async def switch_model(body: ModelSwitchRequest, service: ServiceDep) -> ModelSwitchResponse:
    if service.batcher is None or service.models.active is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "5"})
    try:
        result, previous, persisted = await service.models.switch(
            service.batcher, body.name, body.sha256, "admin"
        )
    except ModelSwitchError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from None
    return ModelSwitchResponse(
        result=result,  # type: ignore[arg-type]
        previous_sha256=previous,
        model=model_response(service),
        persisted=persisted,
    )
