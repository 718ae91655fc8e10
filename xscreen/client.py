"""A small typed client for ``POST /detect`` (docs/integration.md): one view, or a bag of several views.

``Client`` is synchronous (http.client, one keep-alive connection per calling thread); ``AsyncClient`` runs
the same calls in worker threads (asyncio.to_thread), so an asyncio program can have several scans in
flight. Each energy image is a path or its bytes: 16-bit PNG, 16-bit TIFF, .npy, DICOS DX, or headerless
uint16 with ``width``/``height``.

Answers are the service's own pydantic models (``xscreen.inference.response``): ``detect`` answers a
``DetectResponse`` (one view), ``detect_bag`` a ``BagResponse`` (views in the order given, the bag's
``alarm``), ``detect_tdr`` the DICOS TDR's bytes, ``render`` the picture with the boxes (PNG bytes,
one view). ``scan_form`` encodes a request once for sending many
times (``detect_form``), as the benchmarks do.

An answer other than 200 raises ``ApiError`` with the status and the API's JSON ``error`` code and
``detail``; no usable answer (connection refused or reset, timeout, a 200 that is not the contract's)
raises ``TransportError``; an input that cannot be read raises ``InputError``. All three are
``ClientError``. Importing this module loads neither the service, nor the model, nor pydantic (the answer
models load with the first answer).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import select
import threading
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from xscreen.inference.response import BagResponse, DetectResponse

Scan = str | os.PathLike | bytes  # a path to an energy image, or the image's bytes
View = tuple[Scan, Scan]  # (high, low): one view of a bag
DICOM_MEDIA_TYPE = "application/dicom"


class ClientError(Exception):
    """Any failure of a client call."""


class InputError(ClientError):
    """An energy image given as a path that cannot be read, or views that are not (high, low) pairs."""


class TransportError(ClientError):
    """No usable HTTP answer: connection refused or reset, no answer within the timeout, or a 200 answer
    that is not the contract's."""


class ApiError(ClientError):
    """The service answered with an error status; ``code`` and ``detail`` are its JSON body's."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


# -- the request -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanForm:
    """A ``POST /detect`` multipart body, encoded once (``scan_form``); send it with ``detect_form``."""

    body: bytes
    content_type: str
    views: int  # 1: the answer is a DetectResponse; more: a BagResponse


def _read_scan(scan: Scan, label: str, name: str) -> tuple[bytes, str]:
    """The bytes of one energy image and the file name sent with them."""
    if isinstance(scan, (bytes, bytearray, memoryview)):
        return bytes(scan), f"{name}.bin"
    try:
        path = Path(scan)
    except TypeError:
        raise InputError(f"{label} image: give a path or bytes, not {type(scan).__name__}") from None
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise InputError(f"{label} image {path}: cannot read ({exc.strerror or exc})") from None


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(name, filename or None for a form field, value) -> multipart/form-data body and content type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: application/octet-stream\r\n"
        chunks += [head.encode() + b"\r\n", value, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def scan_form(
    views: Sequence[View],
    *,
    scan_id: str | None = None,
    score_threshold: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> ScanForm:
    """The request for one view or a bag: view i is the i-th ``high`` and the i-th ``low`` part, in the
    order of ``views``. ``width``/``height``: headerless uint16 images only (every view that size)."""
    if isinstance(views, (str, bytes)) or not views:
        raise InputError("give at least one view: a list of (high, low) pairs")
    parts: list[tuple[str, str | None, bytes]] = []
    for i, view in enumerate(views):
        where = "" if len(views) == 1 else f"view {i} "
        if not isinstance(view, (tuple, list)) or len(view) != 2:
            raise InputError(f"{where or 'the view '}is not a (high, low) pair".strip())
        for name, scan in zip(("high", "low"), view, strict=True):
            data, filename = _read_scan(scan, where + name, name if len(views) == 1 else f"{name}{i}")
            parts.append((name, filename, data))
    fields = {"scan_id": scan_id, "score_threshold": score_threshold, "width": width, "height": height}
    parts += [(k, None, str(v).encode()) for k, v in fields.items() if v is not None]
    body, content_type = _multipart(parts)
    return ScanForm(body, content_type, len(views))


# -- the answer ------------------------------------------------------------------------------------------
def _api_error(status: int, body: bytes, headers) -> ApiError:
    import json

    try:
        payload = json.loads(body)
        code, detail = str(payload["error"]), str(payload["detail"])
    except (ValueError, KeyError, TypeError):  # not the API's error body (a proxy's page, say)
        code, detail = "http_error", body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    retry = headers.get("Retry-After")
    return ApiError(status, code, detail, float(retry) if retry and retry.isdigit() else None)


def _parse(data: bytes, views: int, where: str) -> DetectResponse | BagResponse:
    """The JSON answer as the service's model: a DetectResponse for one view, a BagResponse for more."""
    from pydantic import ValidationError

    from xscreen.inference.response import BagResponse, DetectResponse

    model = DetectResponse if views == 1 else BagResponse
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "body"
        problem = f"the 200 answer is not a {model.__name__} ({at}: {first['msg']})"
        raise TransportError(f"{where}: {problem}") from None


def as_bag(answer: DetectResponse) -> BagResponse:
    """A single view's answer in the bag shape: view 0, ``source.part`` 0 (without the DX UIDs, which the
    single-view answer does not carry)."""
    from xscreen.inference.response import BagResponse, ViewResult, ViewSource

    view = ViewResult(
        view=0,
        source=ViewSource(part=0),
        image=answer.image,
        alarm=answer.alarm,
        detections=answer.detections,
    )
    return BagResponse(
        scan_id=answer.scan_id,
        model=answer.model,
        score_threshold=answer.score_threshold,
        alarm=answer.alarm,
        views=[view],
        batch_size=answer.batch_size,
        timings=answer.timings,
    )


# -- the connection --------------------------------------------------------------------------------------
def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection that has something to read was closed by the server (EOF)."""
    if conn.sock is None:
        return False
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _close_all(conns: list[http.client.HTTPConnection], lock: threading.Lock) -> None:
    with lock:
        for conn in conns:
            conn.close()


_RESET = (ConnectionResetError, BrokenPipeError)  # http.client.RemoteDisconnected is a ConnectionResetError


class Client:
    """``Client("http://host:8000", api_key="...").detect("high.png", "low.png")`` -> ``DetectResponse``.

    Safe to share between threads: each calling thread keeps its own keep-alive connection (until
    ``close()``, the ``with`` block's end or the client's garbage collection closes them all; close it
    when no call is in flight)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url {base_url!r}: give http://host:port or https://host:port")
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout
        self._url = url
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._conns, self._lock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections (a later call opens a new one)."""
        _close_all(self._conns, self._lock)

    def detect(self, high: Scan, low: Scan, **fields: Any) -> DetectResponse:
        """One view (a high and a low energy image) -> its detections and ``alarm``. ``fields``: ``scan_id``,
        ``score_threshold``, ``width`` and ``height`` (headerless uint16 only), as ``scan_form``'s."""
        return cast("DetectResponse", self.detect_form(scan_form([(high, low)], **fields)))

    def detect_bag(self, views: Sequence[View], **fields: Any) -> BagResponse:
        """A bag of views, (high, low) pairs in order -> one ``BagResponse``: the bag's ``alarm`` and each
        view's detections (one view is answered in the same shape, see ``as_bag``)."""
        form = scan_form(views, **fields)
        answer = self.detect_form(form)
        return as_bag(cast("DetectResponse", answer)) if form.views == 1 else cast("BagResponse", answer)

    def detect_tdr(self, views: Sequence[View], **fields: Any) -> bytes:
        """The answer for one view or a bag as a DICOS Threat Detection Report (its bytes; docs/dicos.md)."""
        form = scan_form(views, **fields)
        data, content_type = self._post("/detect", form, DICOM_MEDIA_TYPE)
        if content_type != DICOM_MEDIA_TYPE:
            raise TransportError(f"POST {self.base_url}/detect: answered {content_type!r}, not a DICOS TDR")
        return data

    def render(self, high: Scan, low: Scan, **fields: Any) -> bytes:
        """One view's pseudo-colour picture with its detections drawn (``POST /render``): PNG bytes."""
        data, content_type = self._post("/render", scan_form([(high, low)], **fields), "image/png")
        if content_type != "image/png":
            raise TransportError(f"POST {self.base_url}/render: answered {content_type!r}, not a PNG")
        return data

    def detect_form(self, form: ScanForm) -> DetectResponse | BagResponse:
        """Send a request encoded by ``scan_form``: the answer as the service gave it."""
        data, _ = self._post("/detect", form, "application/json")
        return _parse(data, form.views, f"POST {self.base_url}/detect")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it is an open one kept from an earlier call."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
            conn = cls(self._url.hostname, self._url.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        if _dropped(conn):
            conn.close()  # http.client opens a new one on the next request
        return conn, conn.sock is not None

    def _post(self, path: str, form: ScanForm, accept: str) -> tuple[bytes, str]:
        """POST ``form``: the 200 answer's body and media type, or ApiError / TransportError. A kept-alive
        connection that the server closed under the request is retried once on a new one."""
        headers = {"Content-Type": form.content_type, "Accept": accept}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        where = f"POST {self.base_url}{path}"
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request("POST", self._url.path.rstrip("/") + path, body=form.body, headers=headers)
                response = conn.getresponse()
                status, data = response.status, response.read()
                break
            except TimeoutError:
                conn.close()
                raise TransportError(f"{where}: no answer within {self.timeout:g} s") from None
            except _RESET as exc:
                conn.close()
                if reused and attempt == 1:
                    continue
                raise TransportError(f"{where}: {exc or type(exc).__name__}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(f"{where}: {exc or type(exc).__name__}") from None
        if status != 200:
            raise _api_error(status, data, response.headers)
        return data, (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()


class AsyncClient:
    """The asyncio twin of ``Client``: ``await AsyncClient(url, api_key=...).detect(high, low)``; each call
    runs in a worker thread (files are read there too)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        self._client = Client(base_url, api_key=api_key, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._client.close()

    async def detect(self, high: Scan, low: Scan, **fields: Any) -> DetectResponse:
        """As ``Client.detect`` (same fields)."""
        return await asyncio.to_thread(self._client.detect, high, low, **fields)

    async def detect_bag(self, views: Sequence[View], **fields: Any) -> BagResponse:
        """As ``Client.detect_bag``."""
        return await asyncio.to_thread(self._client.detect_bag, views, **fields)

    async def detect_tdr(self, views: Sequence[View], **fields: Any) -> bytes:
        """As ``Client.detect_tdr``."""
        return await asyncio.to_thread(self._client.detect_tdr, views, **fields)

    async def render(self, high: Scan, low: Scan, **fields: Any) -> bytes:
        """As ``Client.render``."""
        return await asyncio.to_thread(self._client.render, high, low, **fields)

    async def detect_form(self, form: ScanForm) -> DetectResponse | BagResponse:
        """As ``Client.detect_form``."""
        return await asyncio.to_thread(self._client.detect_form, form)
