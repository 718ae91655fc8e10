"""HTTP error type of the service and the handlers that give every error the body {error, detail}."""

from __future__ import annotations

import enum
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xscreen.scans import ScanError, ScanSizeMismatchError, ScanTooLargeError, UnsupportedScanFormatError
from xscreen.scans.energy import EnergiesSwappedError
from xscreen.scans.errors import ScanParameterError

log = logging.getLogger("xscreen.service")


class ErrorCode(enum.StrEnum):
    """Every ``error`` code the service answers with (the OpenAPI document lists them as an enum)."""

    bad_request = "bad_request"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    conflict = "conflict"
    payload_too_large = "payload_too_large"
    unsupported_media_type = "unsupported_media_type"
    invalid_request = "invalid_request"
    too_many_requests = "too_many_requests"
    internal_error = "internal_error"
    unavailable = "unavailable"
    timeout = "timeout"
    request_timeout = "request_timeout"  # the client's body (or head) too slow: 408, connection closed
    headers_too_large = "headers_too_large"  # request line + headers over max_header_bytes: 431, closed
    error = "error"  # any other framework status
    # scans
    empty_body = "empty_body"
    invalid_scan = "invalid_scan"
    too_many_views = "too_many_views"
    one_view_only = "one_view_only"
    energies_swapped = "energies_swapped"
    invalid_parameter = "invalid_parameter"
    scan_size_mismatch = "scan_size_mismatch"
    too_many_pixels = "too_many_pixels"
    unsupported_format = "unsupported_format"
    not_ready = "not_ready"
    queue_full = "queue_full"
    memory_budget = "memory_budget"
    shutting_down = "shutting_down"
    inference_failed = "inference_failed"
    audit_unavailable = "audit_unavailable"
    # model switching (POST /admin/model)
    admin_disabled = "admin_disabled"
    model_not_found = "model_not_found"
    sha256_mismatch = "sha256_mismatch"
    invalid_model = "invalid_model"
    model_switch_in_progress = "model_switch_in_progress"
    # the review console (service/console, docs/console.md): its JSON answers to the page's script
    console_session_only = "console_session_only"  # a Bearer key on /console: sessions only
    signed_out = "signed_out"
    csrf = "csrf"
    cross_site = "cross_site"
    store_off = "store_off"
    store_unavailable = "store_unavailable"


# Default codes for HTTP errors raised by the framework itself (404, 405, body parse errors...).
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An answer other than 200: HTTP status, a short code and a message for a person."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = str(code)  # one of ErrorCode (tests/service/test_contract.py checks every use)
        self.detail = detail
        self.headers = headers


def scan_error_to_api(exc: ScanError) -> ApiError:
    """A scan the pipeline refused -> 413 (pixel limit), 415 (not an accepted format), 400 (the rest)."""
    msg = str(exc)
    if isinstance(exc, ScanTooLargeError):
        return ApiError(413, "too_many_pixels", msg)
    if isinstance(exc, UnsupportedScanFormatError):
        return ApiError(415, "unsupported_format", msg)
    if isinstance(exc, ScanSizeMismatchError):
        return ApiError(400, "scan_size_mismatch", msg)
    if isinstance(exc, EnergiesSwappedError):
        return ApiError(400, "energies_swapped", msg)
    if isinstance(exc, ScanParameterError):
        return ApiError(400, "invalid_parameter", msg)
    return ApiError(400, "invalid_scan", msg)


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)[:2000]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.state.error = exc.code
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error = "invalid_request"
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        request.state.error = code
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
