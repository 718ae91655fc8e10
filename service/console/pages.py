"""The console's pages (GET): sign-in form, live list and its new rows, a bag's views, the shift summary;
and the route class that gives every console answer its security headers."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from xscreen.model.classes import CLASS_NAMES
from xscreen.service.console.deps import (
    ConsoleDep,
    ReviewerDep,
    in_store,
    refresh_figures,
    scan_store,
    service_state,
)
from xscreen.service.console.security import ConsoleError
from xscreen.store.bag import REQUEST_ID_RE

# Scripts, styles, images and fetches from this server only; forms post back to it; no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
BAG_ID = Path(pattern=REQUEST_ID_RE.pattern, min_length=1, max_length=64, description="the bag's request id")
BagId = Annotated[str, BAG_ID]
PAGE_SIZE = 100


class ConsoleRoute(APIRoute):
    """An APIRoute whose every answer carries SECURITY_HEADERS."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            response = await handler(request)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return secured


def render(request: Request, name: str, context: dict, status: int = 200, **kwargs) -> HTMLResponse:
    templates = request.app.state.console.templates
    page = templates.TemplateResponse(
        request, name, {"class_names": CLASS_NAMES, **context}, status, **kwargs
    )
    page.headers.update(SECURITY_HEADERS)
    return page


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def console_error(request: Request, exc: ConsoleError) -> Response:
    """A refused or failed console request: back to sign-in for a page without a session, JSON for the
    page's script, else a page saying what went wrong."""
    if wants_json(request) or request.url.path.endswith(".png"):
        response: Response = JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status)
    elif exc.status == 401 and request.method == "GET":
        response = RedirectResponse("/console/login", 303)
    else:
        response = render(request, "error.html", {"error": exc}, exc.status)
    response.headers.update({**SECURITY_HEADERS, **exc.headers})
    return response


def _check_class(class_name: str | None) -> str | None:
    if class_name in (None, ""):
        return None
    if class_name not in CLASS_NAMES:
        raise ConsoleError(422, "invalid_request", f"unknown class; one of: {', '.join(CLASS_NAMES)}")
    return class_name


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


@router.get("/login")
async def login_page(request: Request, console: ConsoleDep) -> HTMLResponse:
    scan_store(request)  # the store off: the page says so instead of a form that cannot work
    return render(request, "login.html", {"configured": console.guard.keys.enabled, "message": None})


async def _page_of_bags(request: Request, since: int | None, alarm: bool, class_name: str | None, unreviewed):
    store = scan_store(request)
    return await in_store(
        store.recent_bags,
        limit=PAGE_SIZE,
        since=since,
        alarm_only=alarm,
        class_name=_check_class(class_name),
        unreviewed=unreviewed,
    )


@router.get("")
async def list_page(
    request: Request, reviewer: ReviewerDep, alarm: bool = False, class_name: str | None = None,
    unreviewed: bool = False,
) -> HTMLResponse:  # fmt: skip
    page = await _page_of_bags(request, None, alarm, class_name, unreviewed)
    filters = {"alarm": alarm, "class_name": class_name or "", "unreviewed": unreviewed}
    query = urlencode({k: "true" if v is True else v for k, v in filters.items() if v})
    context = {"reviewer": reviewer, "bags": page.bags, "cursor": page.cursor, "filters": filters}
    context["rows_url"] = "/console/rows" + (f"?{query}" if query else "")
    return render(request, "list.html", context)


@router.get("/rows")
async def new_rows(
    request: Request, reviewer: ReviewerDep, since: Annotated[int, Query(ge=0)], alarm: bool = False,
    class_name: str | None = None, unreviewed: bool = False,
) -> HTMLResponse:  # fmt: skip
    """The live list's rows that became visible after the cursor ``since``; the new cursor in a header."""
    page = await _page_of_bags(request, since, alarm, class_name, unreviewed)
    return render(request, "_rows.html", {"bags": page.bags}, headers={"X-Console-Cursor": str(page.cursor)})


def _views(bag) -> list[dict]:
    views = [
        {"index": i, "width": w, "height": h, "detections": [], "missed": []}
        for i, (w, h) in enumerate(bag.view_sizes)
    ]
    for d in bag.detections:
        views[d.view]["detections"].append(d)
    for m in bag.missed:
        views[m.view]["missed"].append(m)
    return views


@router.get("/bags/{bag_id}")
async def bag_page(request: Request, reviewer: ReviewerDep, bag_id: BagId) -> HTMLResponse:
    bag = await in_store(scan_store(request).get_bag, bag_id)
    context = {
        "reviewer": reviewer,
        "bag": bag,
        "views": _views(bag),
        "threshold": bag.answer.get("score_threshold"),
    }
    return render(request, "bag.html", context)


@router.get("/summary")
async def summary_page(
    request: Request, reviewer: ReviewerDep, console: ConsoleDep,
    hours: Annotated[float | None, Query(gt=0, le=24 * 31)] = None,
) -> HTMLResponse:  # fmt: skip
    """The figures of the last ``hours`` (default: the session TTL, the window the gauges export)."""
    scan_store(request)
    shift_s = console.settings.console_session_ttl_s
    window_s = shift_s if hours is None else hours * 3600.0
    found = await in_store(refresh_figures, service_state(request), window_s, export=window_s == shift_s)
    hours = window_s / 3600.0
    context = {
        "reviewer": reviewer,
        "figures": found,
        "hours": hours,
        "now": datetime.datetime.now(datetime.UTC),
    }
    return render(request, "summary.html", context)
