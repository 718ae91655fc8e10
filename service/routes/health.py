"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

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
async def metrics(service: ServiceDep) -> Response:
    # with XSCREEN_PROTECT_METRICS the request guard has checked the scan key (service.app.guard_policy)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
