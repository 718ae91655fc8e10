"""The console's security: reviewer keys, server-side sessions in a cookie, CSRF tokens, same-origin
checks on every state change, and a per-client limit on failed sign-ins (docs/console.md "Security").

The session cookie holds a random id only (the store keeps its SHA-256). The CSRF token of a session is
an HMAC of a fixed label keyed by the session id: a page gets it in a hidden field, every POST sends it
back (form field ``csrf_token`` or header ``X-CSRF-Token``), and it is compared in constant time. A
cross-site page can read neither the cookie nor the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from xscreen.service.auth import ApiKeys, key_id

log = logging.getLogger("xscreen.service.console")

COOKIE = "xscreen_console"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_CSRF_LABEL = b"xscreen console csrf v1"
MAX_FAILURES = 5  # failed sign-ins per client within FAILURE_WINDOW_S, then 429 until the window passes
FAILURE_WINDOW_S = 300.0
MAX_CLIENTS = 10_000  # clients whose failures are remembered (the oldest forgotten first)


class ConsoleError(Exception):
    """A console request refused or failed: status, a short code and a message the page shows."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


@dataclass(frozen=True)
class Reviewer:
    """The signed-in reviewer of a request: the key's id (never the key) and the session's CSRF token."""

    key_id: str
    session_id: str
    csrf: str
    expires_s: float


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode("ascii"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(csrf_token(session_id).encode(), presented.encode("utf-8", "replace"))


def check_same_origin(request: Request) -> None:
    """Refuse a state change a browser says came from another site (Sec-Fetch-Site, else Origin):
    sign-in CSRF included, which has no session yet. Clients that send neither (curl) pass to the
    session and CSRF checks."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ConsoleError(403, "cross_site", "refused: the request came from another site")
    origin = request.headers.get("origin")
    if origin is not None and site is None:
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise ConsoleError(403, "cross_site", "refused: the request's Origin is not this server")


def set_session_cookie(response: Response, session_id: str, ttl_s: float) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(ttl_s),
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


class SignInGuard:
    """Reviewer keys (constant-time check) and the per-client failure limit of the sign-in form."""

    def __init__(self, keys: list[str]):
        self.keys = ApiKeys(keys)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            times = self._failures.get(client)
            while times and times[0] <= now - FAILURE_WINDOW_S:
                times.popleft()
            if not times or len(times) < MAX_FAILURES:
                return 0
            return max(1, int(times[0] + FAILURE_WINDOW_S - now) + 1)

    def check(self, client: str, key: str) -> str | None:
        """The key's id when ``key`` is a reviewer key; None (counted and logged, never the key) when not."""
        if self.keys.check(key):
            with self._lock:
                self._failures.pop(client, None)
            return key_id(key)
        with self._lock:
            if client not in self._failures and len(self._failures) >= MAX_CLIENTS:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(client, deque()).append(time.monotonic())
            count = len(self._failures[client])
        log.warning(
            "console sign-in refused: not a reviewer key", extra={"client": client, "failures": count}
        )
        return None
