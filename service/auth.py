"""API-key check: ``Authorization: Bearer <key>`` compared in constant time against every configured key.

Two key lists: scan keys (``/detect``, ``/render``, ``/model``, the OpenAPI document) and admin keys
(``/admin/*``). Both are declared in the OpenAPI document as HTTP Bearer schemes, so generated clients
send the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xscreen.service.errors import ApiError

# Declarations for the OpenAPI document only (auto_error=False): the checks below parse the header
# themselves, accepting exactly what the upload guard accepts.
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


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_key(keys: ApiKeys, token: str | None) -> None:
    """401 unless ``token`` is one of ``keys`` (no-op when no key is configured)."""
    if not keys.enabled:
        return
    if token is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not keys.check(token):
        raise ApiError(
            401, "unauthorized", "invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )


def require_api_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(scan_bearer)] = None
) -> None:
    """FastAPI dependency: 401 unless the request carries a configured scan key (no-op when none)."""
    check_key(request.app.state.api_keys, bearer_token(request))


def require_admin_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)] = None
) -> None:
    """FastAPI dependency: 403 when no admin key is configured, 401 unless the request carries one."""
    keys: ApiKeys = request.app.state.admin_keys
    if not keys.enabled:
        raise ApiError(
            403,
            "admin_disabled",
            "no admin key is configured (XSCREEN_ADMIN_KEYS or XSCREEN_ADMIN_KEYS_FILE)",
        )
    check_key(keys, bearer_token(request))
