"""uvicorn's httptools protocol with a request-head timeout and size limit: a client that does not finish
the request line and headers within ``header_timeout_s`` (counted from the connection, or from the
previous answer on a kept-alive connection) gets a JSON 408, one whose head passes ``max_header_bytes``
a JSON 431, and the connection is closed. uvicorn has neither: its keep-alive timeout ends only idle
connections (any byte received cancels it), and httptools keeps every header in memory.

It also closes like nginx's lingering close: a request answered before its body was read (401 without a
key, 413, ...) has its connection half-closed after the answer, and the rest of the body is read and
dropped for at most ``LINGER_S`` (``LINGER_IDLE_S`` without a byte) before the close. Closed at once, the
unread bytes make the kernel reset the connection, and a client still sending (or a proxy: Go's, in
Caddy, drops its client when more than 256 KiB of body are left) sees a reset instead of the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 5.0  # longest read-and-drop of an answered request's unread body
LINGER_IDLE_S = 2.0  # ... and without a byte from the client


def _answer(status: str, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error answer with the service's JSON body, closing the connection."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` asks the protocol, which lingers when the
    answered request's body is still on its way; everything else is the transport's."""

    def __init__(self, transport: asyncio.Transport, protocol: HeadTimeoutProtocol):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_lingering()


class HeadTimeoutProtocol(HttpToolsProtocol):
    """Arms a timer whenever a request head is awaited (new connection, answer sent on a kept-alive
    connection) and disarms it when the head is complete; on expiry, or when the awaited head grows past
    ``max_header_bytes``, the connection is answered and closed.
    Pass it as ``uvicorn.Config(http=head_protocol(seconds, max_bytes))``."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received since the timer was armed
        self._raw: asyncio.Transport | None = None  # the transport itself (self.transport wraps it)
        self._linger: asyncio.TimerHandle | None = None
        self._linger_until = self._linger_last = 0.0

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: str, code: str, detail: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_answer(status, code, detail))
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_bytes:  # an idle connection is closed without an answer
            self.transport.close()
            return
        detail = f"request line and headers not complete within {self.header_timeout_s:g} s"
        self._refuse("408 Request Timeout", "request_timeout", detail)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm()

    def close_lingering(self) -> None:
        """Close now, or, when the request being answered still has body bytes to come, half-close after
        the answer and drop what arrives until the client stops sending (or the linger time ends)."""
        raw, cycle = self._raw, self.cycle
        assert raw is not None
        unread = cycle is not None and cycle.more_body and not cycle.disconnected
        if self._linger is not None or not unread or raw.is_closing() or not raw.can_write_eof():
            raw.close()
            return
        self._disarm()
        raw.write_eof()  # the answer, then FIN: the client reads it while its body drains
        raw.resume_reading()
        now = self.loop.time()
        self._linger_until, self._linger_last = now + LINGER_S, now
        self._linger = self.loop.call_later(LINGER_IDLE_S, self._linger_check)

    def _linger_check(self) -> None:
        now = self.loop.time()
        if now >= self._linger_until or now - self._linger_last >= LINGER_IDLE_S:
            assert self._raw is not None
            self._raw.close()
            return
        due = min(self._linger_until, self._linger_last + LINGER_IDLE_S)
        self._linger = self.loop.call_at(due, self._linger_check)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:  # the rest of an answered request's body: dropped
            self._linger_last = self.loop.time()
            return
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still no complete head (the parser disarms the timer when it completes one): check its size.
        if self._head_timer is not None and self._head_bytes > self.max_header_bytes:
            detail = f"request line and headers over {self.max_header_bytes} bytes"
            self._refuse("431 Request Header Fields Too Large", "headers_too_large", detail)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next head is awaited unless the connection closes or a pipelined request (head complete) runs.
        if not self.transport.is_closing() and not self.pipeline:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)


def head_protocol(header_timeout_s: float, max_header_bytes: int) -> type[HeadTimeoutProtocol]:
    """A HeadTimeoutProtocol class bound to these limits (uvicorn instantiates the class itself)."""
    limits = {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes}
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), limits)
