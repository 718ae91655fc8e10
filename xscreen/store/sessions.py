"""Console sign-ins kept in the store's index, so every replica sharing it knows every reviewer's session.

A session is a random id (32 bytes, URL-safe) handed to the browser once; the table keeps only its
SHA-256 with the reviewer's key id and the expiry. A stolen copy of the table therefore signs nobody in,
and a session is ended by deleting its row (sign-out) or by its expiry (rows past it are swept).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from xscreen.store import schema as t
from xscreen.store.database import transaction, unavailable_on_error
from xscreen.store.errors import StoreInputError
from xscreen.store.store import ScanStore

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
SWEEP_EVERY_S = 300.0


@dataclass(frozen=True)
class Session:
    reviewer: str  # the reviewer key's id
    created_s: float
    expires_s: float


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


class SessionTable:
    """Create, look up and end console sessions in ``store``'s index (StoreUnavailable without it)."""

    def __init__(self, store: ScanStore):
        self.store = store
        self._next_sweep = 0.0

    def create(self, reviewer: str, ttl_s: float) -> tuple[str, Session]:
        """A new session of ``reviewer`` lasting ``ttl_s``: (the id to give the browser, the session)."""
        if not isinstance(reviewer, str) or not 0 < len(reviewer) <= 128 or not ttl_s > 0:
            raise StoreInputError("a session needs a reviewer id of 1-128 characters and a positive TTL")
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(reviewer, now, now + ttl_s)
        self.store._ensure_ready()
        with unavailable_on_error(), transaction(self.store.engine, write=True) as conn:
            row = {"id_sha256": _digest(session_id), "reviewer": reviewer, "created_s": now}
            conn.execute(sa.insert(t.console_sessions).values(**row, expires_s=session.expires_s))
        self._sweep(now)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``, or None (malformed, unknown, signed out or expired)."""
        if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
            return None
        s = t.console_sessions.c
        self.store._ensure_ready()
        with unavailable_on_error(), transaction(self.store.engine) as conn:
            row = conn.execute(
                sa.select(s.reviewer, s.created_s, s.expires_s).where(s.id_sha256 == _digest(session_id))
            ).first()
        if row is None or row.expires_s <= time.time():
            return None
        return Session(row.reviewer, row.created_s, row.expires_s)

    def delete(self, session_id: str) -> bool:
        """End a session (sign-out); True if it existed."""
        if not SESSION_ID_RE.fullmatch(session_id):
            return False
        s = t.console_sessions.c
        self.store._ensure_ready()
        with unavailable_on_error(), transaction(self.store.engine, write=True) as conn:
            gone = conn.execute(sa.delete(t.console_sessions).where(s.id_sha256 == _digest(session_id)))
        return gone.rowcount > 0

    def _sweep(self, now: float) -> None:
        """Delete expired rows, at most every SWEEP_EVERY_S per process (on sign-in)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        s = t.console_sessions.c
        with unavailable_on_error(), transaction(self.store.engine, write=True) as conn:
            conn.execute(sa.delete(t.console_sessions).where(s.expires_s <= now))
