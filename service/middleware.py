"""Pure ASGI middleware: request ids, request metrics + one JSON log line per request, and the upload guard.

Request ids: a valid ``X-Request-ID`` is kept, else the trace id of a valid W3C ``traceparent``, else a
new one; a malformed header is replaced, never refused. The answer carries ``X-Request-ID`` and a
``traceparent`` continuing the caller's trace (same trace id, this server's span id).

The upload guard runs before any body is parsed: API key (401), content type (415), declared and
streamed size against ``max_upload_bytes`` (413, enforced while reading), empty body (400).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from xscreen.service.auth import ApiKeys
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

    def __init__(self, app: ASGIApp, metrics, known_paths: set[str]):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return path
        # Rejected before routing (guard) or not routed at all: never label with a raw client path.
        return scope["path"] if scope["path"] in self.known_paths else "unmatched"

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


class UploadGuardMiddleware:
    """Checks POST uploads to ``paths`` before the framework parses the body."""

    def __init__(self, app: ASGIApp, paths: set[str], api_keys: ApiKeys, max_upload_bytes: int):
        self.app = app
        self.paths = paths
        self.api_keys = api_keys
        self.max_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def reject(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
            state["error"] = code
            await send_json(send, status, {"error": code, "detail": detail}, headers)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_keys.enabled:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await reject(
                    401,
                    "unauthorized",
                    "missing API key: send 'Authorization: Bearer <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            if not self.api_keys.check(token.strip()):
                await reject(
                    401,
                    "unauthorized",
                    "invalid API key",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
                return
        ctype = headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "multipart/form-data":
            shown = ctype.split(";")[0].strip()[:100] or "none"
            await reject(
                415,
                "unsupported_media_type",
                f"content type {shown!r}: send the scan as multipart/form-data with parts 'high' and 'low'",
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                await reject(400, "bad_request", "invalid Content-Length header")
                return
            if declared_n > self.max_bytes:
                await reject(
                    413,
                    "payload_too_large",
                    f"request body of {declared_n} bytes exceeds the limit of {self.max_bytes} bytes",
                )
                return
        # Read the body here, counting as it streams in, and stop at the limit (chunked uploads too).
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await reject(
                    413, "payload_too_large", f"request body exceeds the limit of {self.max_bytes} bytes"
                )
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        if total == 0:
            await reject(400, "empty_body", "empty request body: send parts 'high' and 'low'")
            return
        payload = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
