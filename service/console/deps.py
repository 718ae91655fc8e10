"""What every console route needs: the console's state, the store (or why there is none), the signed-in
reviewer, and for state changes the same-origin and CSRF checks; store calls off the event loop with the
store's errors turned into ConsoleError."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from xscreen.service.console import figures
from xscreen.service.console.security import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    ConsoleError,
    Reviewer,
    SignInGuard,
    check_same_origin,
    csrf_matches,
    csrf_token,
)
from xscreen.service.settings import Settings
from xscreen.service.state import ServiceState
from xscreen.store import BagNotFound, ScanStore, StoreInputError, StoreUnavailable
from xscreen.store.sessions import SessionTable

log = logging.getLogger("xscreen.service.console")
TEMPLATES = Path(__file__).resolve().parent / "templates"
REFRESH_EVERY_S = 60.0
T = TypeVar("T")

STORE_OFF = (
    "The console shows the bags the scan store keeps, and the store is off: XSCREEN_STORE_DIR is unset, so "
    "no bag is kept and nothing is written. Set it (docs/console.md) and restart the service."
)


@dataclass
class ConsoleState:
    settings: Settings
    guard: SignInGuard
    templates: Jinja2Templates
    sessions: SessionTable | None = None
    refresher: asyncio.Task | None = field(default=None, repr=False)

    @classmethod
    def create(cls, service: ServiceState) -> ConsoleState:
        settings = service.settings
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        templates = Jinja2Templates(env=env)
        sessions = SessionTable(service.store.store) if service.store is not None else None
        return cls(settings, SignInGuard(settings.all_reviewer_keys()), templates, sessions)

    def start(self, service: ServiceState) -> None:
        """Refresh the review gauges every REFRESH_EVERY_S on the running loop (store on only)."""
        if service.store is None:
            return

        async def refresh() -> None:
            while True:
                try:
                    await run_in_threadpool(refresh_figures, service, self.settings.console_session_ttl_s)
                except Exception as exc:  # an unreachable index: the gauges keep their last values
                    log.warning("console figures not refreshed: %s", exc)
                await asyncio.sleep(REFRESH_EVERY_S)

        self.refresher = asyncio.get_running_loop().create_task(refresh(), name="xscreen-console-figures")

    def stop(self) -> None:
        if self.refresher is not None:
            self.refresher.cancel()


def refresh_figures(service: ServiceState, window_s: float, export: bool = True) -> figures.ShiftFigures:
    """The figures of the last ``window_s``, exported as the review gauges with ``export`` (blocking)."""
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    found = figures.shift_figures(service.store.store, end - datetime.timedelta(seconds=window_s), end)
    if export:
        figures.export(service.metrics, found)
    return found


def console_state(request: Request) -> ConsoleState:
    return request.app.state.console


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def scan_store(request: Request) -> ScanStore:
    """The scan store, or ConsoleError 503 saying it is off."""
    writer = service_state(request).store
    if writer is None:
        raise ConsoleError(503, "store_off", STORE_OFF)
    return writer.store


async def in_store(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call`` in the thread pool; the store's errors as ConsoleError (503, 404, 422)."""
    try:
        return await run_in_threadpool(call, *args, **kwargs)
    except StoreUnavailable as exc:
        raise ConsoleError(503, "store_unavailable", f"The scan store cannot be reached: {exc}") from None
    except BagNotFound as exc:
        raise ConsoleError(404, "not_found", str(exc)) from None
    except StoreInputError as exc:
        raise ConsoleError(422, "invalid_request", str(exc)) from None


async def current_reviewer(request: Request) -> Reviewer:
    """The reviewer of the request's session cookie; ConsoleError 401 without a live session."""
    scan_store(request)
    sessions = console_state(request).sessions
    session_id = request.cookies.get(COOKIE)
    session = await in_store(sessions.get, session_id) if session_id else None
    if session is None:
        raise ConsoleError(401, "signed_out", "Sign in with a reviewer key.")
    return Reviewer(session.reviewer, session_id, csrf_token(session_id), session.expires_s)


async def changing_reviewer(request: Request) -> Reviewer:
    """``current_reviewer`` for a state change: same origin, and the session's CSRF token (form field or
    header) or 403 before anything is done."""
    check_same_origin(request)
    reviewer = await current_reviewer(request)
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not csrf_matches(reviewer.session_id, presented):
        log.warning("console: CSRF token missing or wrong", extra={"key_id": reviewer.key_id})
        raise ConsoleError(
            403, "csrf", "Refused: the form's CSRF token is missing or wrong. Reload the page."
        )
    return reviewer


ConsoleDep = Annotated[ConsoleState, Depends(console_state)]
ReviewerDep = Annotated[Reviewer, Depends(current_reviewer)]
ChangingReviewerDep = Annotated[Reviewer, Depends(changing_reviewer)]
