"""API-key check: ``Authorization: Bearer <key>`` compared in constant time against every configured key.

Two key lists: scan keys (``/detect``, ``/render``, ``/model``, the OpenAPI document) and admin keys
(``/admin/*``). Both are declared in the OpenAPI document as HTTP Bearer schemes, so generated clients
send the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xscreen.service.errors import ApiError

log = logging.getLogger("xscreen.service")

# Declarations for the OpenAPI document only (auto_error=False): the request guard (service.middleware)
# checks the key once, before any body is read, with parse_bearer and key_refusal below.
scan_bearer = HTTPBearer(
    scheme_name="ApiKey",
    description="a scan key (XSCREEN_API_KEYS / XSCREEN_API_KEYS_FILE) as 'Authorization: Bearer <key>'; "
    "not needed when the service runs without keys on loopback",
    auto_error=False,
)
admin_bearer = HTTPBearer(
    scheme_name="AdminKey",
    description="an admin key (XSCREEN_ADMIN_KEYS / XSCREEN_ADMIN_KEYS_FILE) "
    "as 'Authorization: Bearer <key>'",
    auto_error=False,
)


def key_id(key: str) -> str:
    """What logs and the audit trail record instead of a key: the first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class ApiKeys:
    """The configured keys, kept only as SHA-256 digests so equal-length comparison is constant time."""

    def __init__(self, keys: list[str]):
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(digest, known)
        return ok


@dataclass(frozen=True)
class KeyRefusal:
    """Why a request's key is refused: the one place the key errors' status, code and wording live."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] | None = None


MISSING_KEY = KeyRefusal(
    401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
)
INVALID_KEY = KeyRefusal(
    401, "unauthorized", "invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
)
ADMIN_DISABLED = KeyRefusal(
    403, "admin_disabled", "no admin key is configured (XSCREEN_ADMIN_KEYS or XSCREEN_ADMIN_KEYS_FILE)"
)


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_refusal(keys: ApiKeys, token: str | None, *, admin: bool = False) -> KeyRefusal | None:
    """None when ``token`` may pass: one of ``keys``, or any request when no scan key is configured.
    Admin routes (``admin=True``) are refused with 403 when no admin key is configured."""
    if not keys.enabled:
        return ADMIN_DISABLED if admin else None
    if token is None:
        return MISSING_KEY
    return None if keys.check(token) else INVALID_KEY


def _checked_by_guard(request: Request, rule: str) -> None:
    """The request guard (service.middleware) checked this request's key against ``rule``'s key list and
    recorded that in the request state; a route whose key nobody checked is refused (fail closed)."""
    if getattr(request.state, "key_rule", None) != rule:
        log.error("no %s key check ran for %s %s", rule, request.method, request.url.path)
        raise ApiError(500, "internal_error", "the request guard did not check this request's key")


def require_api_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(scan_bearer)] = None
) -> None:
    """FastAPI dependency: declares the scan key scheme; the request guard has already checked the key."""
    _checked_by_guard(request, "scan")


def require_admin_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)] = None
) -> None:
    """FastAPI dependency: declares the admin key scheme; the request guard has already answered 403 when
    no admin key is configured and 401 unless the request carries one."""
    _checked_by_guard(request, "admin")
