"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from xscreen.service.auth import bearer_token, check_key
from xscreen.service.schemas import ErrorResponse, HealthResponse, ReadyResponse
from xscreen.service.state import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "not ready yet (loading or warming up)"}},
    summary="Weights loaded and a warm-up inference done",
)
async def readyz(service: ServiceDep) -> Response:
    body = ReadyResponse(ready=service.ready, detail=service.ready_detail)
    return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"},
        401: {"model": ErrorResponse},
    },
    summary="Prometheus metrics",
)
async def metrics(request: Request, service: ServiceDep) -> Response:
    if service.settings.protect_metrics:
        check_key(service.api_keys, bearer_token(request))
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
