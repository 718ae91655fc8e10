"""Pure ASGI middleware: request ids, request metrics + one JSON log line per request, and the request guard.

Request ids: a valid ``X-Request-ID`` is kept, else the trace id of a valid W3C ``traceparent``, else a
new one; a malformed header is replaced, never refused. The answer carries ``X-Request-ID`` and a
``traceparent`` continuing the caller's trace (same trace id, this server's span id).

The request guard runs before any body is read, on every path: the path's key (scan key 401, admin key
403/401), a scan upload's content type (415), the declared and streamed size against the path's limit
(413: ``max_upload_bytes`` for /detect and /render, ``max_json_bytes`` elsewhere), the body's idle and
total read time (408), an empty scan upload (400).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from xscreen.service.auth import ApiKeys, key_id, key_refusal, parse_bearer
from xscreen.service.logs import request_ids

log = logging.getLogger("xscreen.service.access")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, flags) of a valid W3C traceparent (version 00 rules, all-zero ids refused), else None."""
    if not value:
        return None
    m = TRACEPARENT_RE.match(value.strip().lower())
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, flags


def request_identity(headers: dict[str, str]) -> dict[str, str]:
    """request_id, trace_id and the traceparent to answer with, from the request's headers."""
    trace = parse_traceparent(headers.get("traceparent"))
    trace_id, flags = trace if trace else (secrets.token_hex(16), "00")
    given = headers.get("x-request-id", "").strip()
    request_id = given if REQUEST_ID_RE.match(given) else trace_id
    return {
        "request_id": request_id,
        "trace_id": trace_id,
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}",
    }


class ObservabilityMiddleware:
    """Latency histogram and counter by route template/method/status, in-flight gauge, access log line."""

    def __init__(self, app: ASGIApp, metrics, known_paths: set[str], known_prefixes: tuple[str, ...] = ()):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths
        self.known_prefixes = known_prefixes  # mounted file trees (/static/): one label per tree

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return path
        # Rejected before routing (guard), not routed at all or a mount: never label with a raw client path.
        if scope["path"] in self.known_paths:
            return scope["path"]
        return next((p for p in self.known_prefixes if scope["path"].startswith(p)), "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status_holder = {"status": 500}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ids = request_identity(headers)
        state["request_id"], state["trace_id"] = ids["request_id"], ids["trace_id"]
        extra_headers = [
            (b"x-request-id", ids["request_id"].encode()),
            (b"traceparent", ids["traceparent"].encode()),
        ]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await send(message)

        token = request_ids.set({"request_id": ids["request_id"], "trace_id": ids["trace_id"]})
        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            self.metrics.in_flight.dec()
            route, method, status = self._route(scope), scope["method"], str(status_holder["status"])
            self.metrics.request_duration.labels(route, method, status).observe(elapsed)
            self.metrics.requests.labels(route, method, status).inc()
            extra = {
                "method": method,
                "route": route,
                "status": int(status),
                "duration_s": round(elapsed, 6),
            }
            for key in ("scan_id", "timings", "detections", "error", "key_id"):
                if key in state:
                    extra[key] = state[key]
            log.info("request", extra=extra)
            request_ids.reset(token)


@dataclass(frozen=True)
class RouteRule:
    """What the request guard enforces on one path: whose key, how many body bytes, whether it is a scan
    upload (multipart/form-data, empty body refused)."""

    keys: Literal["scan", "admin", "open", "console"]  # console: reviewer sessions only, no Bearer key
    max_body: int
    upload: bool = False


@dataclass(frozen=True)
class GuardPolicy:
    """The guard's table: exact paths, path prefixes (``/admin/``), and the rule of every other path."""

    paths: dict[str, RouteRule]
    prefixes: dict[str, RouteRule]
    default: RouteRule
    body_idle_timeout_s: float
    upload_timeout_s: float

    def rule(self, path: str) -> RouteRule:
        if path in self.paths:
            return self.paths[path]
        for prefix, rule in self.prefixes.items():
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return rule
        return self.default


# The console (service/console) takes reviewer sessions only: a scan or admin key is refused there, so a
# leaked scan key never reads travellers' pictures and no script can use a key to post verdicts.
CONSOLE_BEARER = "the console takes reviewer sessions only (sign in at /console/login); keys are refused here"


class BodyTimeout(Exception):
    """The client sent no body byte for the idle timeout, or not the whole body within the upload time."""


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


async def read_body(receive: Receive, limit: int, idle_s: float, total_s: float) -> bytes | int | None:
    """The whole request body; the byte count once it passes ``limit`` (reading stops there); None when
    the client disconnects. BodyTimeout after ``idle_s`` without a byte or ``total_s`` in all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - loop.time()
        try:
            async with asyncio.timeout(min(idle_s, max(left, 0.0))):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(
                f"no request body byte for {idle_s:g} s"
                if left > idle_s
                else f"request body not complete within {total_s:g} s"
            ) from None
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        total += len(body)
        if total > limit:
            return total
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RequestGuardMiddleware:
    """Runs before any route reads a byte of the body, on every path: the key (scan or admin, per the
    policy; stored as ``key_id`` and ``key_rule`` in the request state so routes never re-parse it), the
    content type of scan uploads (415), the declared size (413); then reads the body itself, counting as
    it streams, against the path's limit (413) and the idle and total upload time (408, connection closed).
    """

    def __init__(self, app: ASGIApp, policy: GuardPolicy, api_keys: ApiKeys, admin_keys: ApiKeys):
        self.app = app
        self.policy = policy
        self.keys = {"scan": api_keys, "admin": admin_keys}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rule = self.policy.rule(scope["path"])
        upload = rule.upload and scope["method"] == "POST"
        has_body = upload or _has_body(headers)

        async def reject(status: int, code: str, detail: str, extra: dict[str, str] | None = None) -> None:
            state["error"] = code
            # A body left unread is not drained: the connection is closed after the answer.
            close = {"Connection": "close"} if has_body else {}
            await send_json(send, status, {"error": code, "detail": detail}, {**(extra or {}), **close})

        if await self._refused_unread(state, headers, rule, upload, has_body, reject):
            return
        if not has_body:
            await self.app(scope, receive, send)
            return
        try:
            payload = await read_body(
                receive, rule.max_body, self.policy.body_idle_timeout_s, self.policy.upload_timeout_s
            )
        except BodyTimeout as exc:
            await reject(408, "request_timeout", f"{exc}: send the body without pauses")
            return
        if payload is None:
            return
        if isinstance(payload, int):
            await reject(413, "payload_too_large", f"request body exceeds the limit of {rule.max_body} bytes")
            return
        if upload and not payload:
            await reject(400, "empty_body", "empty request body: send parts 'high' and 'low'")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refused_unread(
        self,
        state: dict,
        headers: dict[str, str],
        rule: RouteRule,
        upload: bool,
        has_body: bool,
        reject: Callable[..., Awaitable[None]],
    ) -> bool:
        """The checks that need no body byte: the key (stored in ``state``), an upload's content type, the
        declared length. True when ``reject`` has answered."""
        if rule.keys == "console" and "authorization" in headers:
            await reject(403, "console_session_only", CONSOLE_BEARER)
            return True
        if rule.keys not in ("open", "console"):
            keys = self.keys[rule.keys]
            token = parse_bearer(headers.get("authorization"))
            refusal = key_refusal(keys, token, admin=rule.keys == "admin")
            if refusal is not None:
                await reject(refusal.status, refusal.code, refusal.detail, refusal.headers)
                return True
            if token is not None and keys.enabled:
                state["key_id"] = key_id(token)
        state["key_rule"] = rule.keys
        if not has_body:
            return False
        if upload:
            ctype = headers.get("content-type", "").split(";")[0].strip()
            if ctype.lower() != "multipart/form-data":
                await reject(
                    415,
                    "unsupported_media_type",
                    f"content type {ctype[:100] or 'none'!r}: send the scan as multipart/form-data "
                    "with parts 'high' and 'low'",
                )
                return True
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await reject(400, "bad_request", "invalid Content-Length header")
                return True
            if int(declared) > rule.max_body:
                await reject(
                    413,
                    "payload_too_large",
                    f"request body of {int(declared)} bytes exceeds the limit of {rule.max_body} bytes",
                )
                return True
        return False
