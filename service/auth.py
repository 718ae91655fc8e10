"""API-key check: ``Authorization: Bearer <key>`` compared in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request


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


def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries a configured key (no-op when none configured)."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return
    token = bearer_token(request)
    if token is None:
        raise HTTPException(
            401,
            detail="missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not keys.check(token):
        raise HTTPException(
            401, detail="invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
