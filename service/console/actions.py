"""The console's state changes (POST): sign-in, sign-out and reviewers' verdicts, each recorded in the
store and appended to the audit trail with the reviewer's key id; and the views' pictures (GET)."""

from __future__ import annotations

import datetime
import logging
from typing import Annotated, Literal

import cv2
import numpy as np
from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from xscreen.scans.picture import pseudo_colour
from xscreen.service.audit import AuditError
from xscreen.service.console.deps import (
    ChangingReviewerDep,
    ConsoleDep,
    ReviewerDep,
    in_store,
    scan_store,
    service_state,
)
from xscreen.service.console.pages import SECURITY_HEADERS, BagId, ConsoleRoute, render, wants_json
from xscreen.service.console.security import (
    ConsoleError,
    Reviewer,
    check_same_origin,
    clear_session_cookie,
    set_session_cookie,
)
from xscreen.store import Verdict

log = logging.getLogger("xscreen.service.console")
router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)
MAX_KEY_LENGTH = 512


@router.post("/login")
async def sign_in(
    request: Request, console: ConsoleDep, key: Annotated[str, Form(max_length=MAX_KEY_LENGTH)]
):
    check_same_origin(request)
    scan_store(request)
    client = request.client.host if request.client else "unknown"

    def refused(status: int, message: str, headers: dict | None = None) -> Response:
        context = {"configured": console.guard.keys.enabled, "message": message}
        return render(request, "login.html", context, status, headers=headers)

    if not console.guard.keys.enabled:
        return refused(503, "No reviewer key is configured (XSCREEN_REVIEWER_KEYS): nobody can sign in.")
    wait = console.guard.retry_after(client)
    if wait:
        return refused(
            429, f"Too many failed sign-ins from here. Try again in {wait} s.", {"Retry-After": str(wait)}
        )
    reviewer = console.guard.check(client, key)
    if reviewer is None:
        return refused(401, "That is not a reviewer key.")
    session_id, _ = await in_store(console.sessions.create, reviewer, console.settings.console_session_ttl_s)
    log.info("console sign-in", extra={"key_id": reviewer})
    response = RedirectResponse("/console", 303)
    set_session_cookie(response, session_id, console.settings.console_session_ttl_s)
    return response


@router.post("/logout")
async def sign_out(console: ConsoleDep, reviewer: ChangingReviewerDep) -> Response:
    await in_store(console.sessions.delete, reviewer.session_id)
    log.info("console sign-out", extra={"key_id": reviewer.key_id})
    response = RedirectResponse("/console/login", 303)
    clear_session_cookie(response)
    return response


def _verdict_json(v: Verdict) -> dict:
    return {
        "id": v.id, "kind": v.kind, "view": v.view, "detection": v.detection, "class_name": v.class_name,
        "box": list(v.box) if v.box else None, "reviewer": v.reviewer, "time": v.time.isoformat(),
        "current": v.current,
    }  # fmt: skip


async def _recorded(request: Request, reviewer: Reviewer, bag_id: str, verdict: Verdict) -> Response:
    """Count the verdict, append it to the audit trail, and answer the page (JSON) or the form (303)."""
    service = service_state(request)
    service.metrics.review_verdicts.labels(class_name=verdict.class_name, verdict=verdict.kind).inc()
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": "review_verdict",
        "route": request.scope["route"].path,
        "request_id": bag_id,
        "key_id": reviewer.key_id,
        "verdict": _verdict_json(verdict),
    }
    if service.audit is not None:
        try:
            await service.audit.append(record)
        except AuditError as exc:
            log.error(
                "console verdict stored but not audited", extra={"error": str(exc), "request_id": bag_id}
            )
            detail = "The verdict is stored, but the audit trail cannot be written; tell the operator."
            raise ConsoleError(503, "audit_unavailable", detail) from None
    if wants_json(request):
        return JSONResponse({"verdict": _verdict_json(verdict)}, headers=SECURITY_HEADERS)
    return RedirectResponse(f"/console/bags/{bag_id}", 303)


@router.post("/bags/{bag_id}/verdicts")
async def detection_verdict(
    request: Request, reviewer: ChangingReviewerDep, bag_id: BagId,
    view: Annotated[int, Form(ge=0, le=63)], detection: Annotated[int, Form(ge=0, le=100_000)],
    verdict: Annotated[Literal["confirm", "false_alarm"], Form()],
) -> Response:  # fmt: skip
    store = scan_store(request)
    found = await in_store(store.set_detection_verdict, bag_id, view, detection, verdict, reviewer.key_id)
    return await _recorded(request, reviewer, bag_id, found)


@router.post("/bags/{bag_id}/missed")
async def missed_object(
    request: Request, reviewer: ChangingReviewerDep, bag_id: BagId, view: Annotated[int, Form(ge=0, le=63)],
    x1: Annotated[float, Form()], y1: Annotated[float, Form()], x2: Annotated[float, Form()],
    y2: Annotated[float, Form()], class_name: Annotated[str, Form(max_length=64)],
) -> Response:  # fmt: skip
    store = scan_store(request)
    found = await in_store(
        store.add_missed_object, bag_id, view, (x1, y1, x2, y2), class_name, reviewer.key_id
    )
    return await _recorded(request, reviewer, bag_id, found)


@router.post("/bags/{bag_id}/missed/{verdict_id}/remove")
async def remove_missed(
    request: Request, reviewer: ChangingReviewerDep, bag_id: BagId,
    verdict_id: Annotated[int, Path(ge=1, le=2**62)],
) -> Response:  # fmt: skip
    store = scan_store(request)
    found = await in_store(store.remove_missed_object, bag_id, verdict_id, reviewer.key_id)
    return await _recorded(request, reviewer, bag_id, found)


def _grey(image: np.ndarray) -> np.ndarray:
    """A raw energy image (uint16) as 8-bit grey, air (its 99.5th percentile) white."""
    air = max(float(np.percentile(image, 99.5)), 1.0)
    return np.clip(image.astype(np.float32) * (255.0 / air), 0, 255).astype(np.uint8)


def view_png(store, bag_id: str, index: int, mode: str) -> bytes:
    """One stored view as PNG bytes: the pseudo-colour picture, or the high or low energy in grey."""
    view = store.view(bag_id, index)
    if mode == "pseudo":
        image = cv2.cvtColor(pseudo_colour(view.high, view.low), cv2.COLOR_RGB2BGR)
    else:
        image = _grey(view.high if mode == "high" else view.low)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ConsoleError(500, "internal_error", "cannot encode the picture")
    return png.tobytes()


@router.get("/bags/{bag_id}/views/{index}.png")
async def view_picture(
    request: Request, reviewer: ReviewerDep, bag_id: BagId, index: Annotated[int, Path(ge=0, le=63)],
    mode: Annotated[Literal["pseudo", "high", "low"], Query()] = "pseudo",
) -> Response:  # fmt: skip
    """The picture only: the page draws boxes over it (SVG), so zoom keeps them aligned."""
    png = await in_store(view_png, scan_store(request), bag_id, index, mode)
    return Response(
        png, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "private, no-store"}
    )
