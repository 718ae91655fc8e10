"""uvicorn's httptools protocol with a request-head timeout: a client that does not finish the request line
and headers within ``header_timeout_s`` (counted from the connection, or from the previous answer on a
kept-alive connection) gets a JSON 408 and the connection is closed. uvicorn has no such timeout; its
keep-alive timeout ends only idle connections, and any byte received cancels it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout_answer(timeout_s: float) -> bytes:
    body = json.dumps(
        {
            "error": "request_timeout",
            "detail": f"request line and headers not complete within {timeout_s:g} s",
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeadTimeoutProtocol(HttpToolsProtocol):
    """Arms a timer whenever a request head is awaited (new connection, answer sent on a kept-alive
    connection) and disarms it when the head is complete; on expiry the connection is answered and closed.
    Pass it as ``uvicorn.Config(http=head_timeout_protocol(seconds))``."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received since the timer was armed

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:  # a started request gets an answer; an idle connection is only closed
            self.transport.write(_timeout_answer(self.header_timeout_s))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)

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
        super().connection_lost(exc)


def head_timeout_protocol(header_timeout_s: float) -> type[HeadTimeoutProtocol]:
    """A HeadTimeoutProtocol class bound to ``header_timeout_s`` (uvicorn instantiates the class itself)."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout_s": header_timeout_s})
