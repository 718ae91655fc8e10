"""A small typed client for the service's ``POST /detect`` (docs/integration.md), standard library only.

``Client`` is synchronous (http.client); ``AsyncClient`` runs the same request in a worker thread
(asyncio.to_thread), so an asyncio program can have several scans in flight. Each energy image is a path
or its bytes: 16-bit PNG, 16-bit TIFF, .npy, DICOS DX, or headerless uint16 with ``width``/``height``.

An answer other than 200 raises ``ApiError`` with the status and the API's JSON ``error`` code and
``detail``; no answer (connection refused, timeout) raises ``TransportError``; an input file that cannot
be read raises ``InputError``. All three are ``ClientError``. Importing this module loads neither the
service nor the model.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Scan = str | os.PathLike | bytes  # a path to an energy image, or the image's bytes


class ClientError(Exception):
    """Any failure of a client call."""


class InputError(ClientError):
    """An energy image given as a path that cannot be read."""


class TransportError(ClientError):
    """No HTTP answer: connection refused or reset, or no answer within the timeout."""


class ApiError(ClientError):
    """The service answered with an error status; ``code`` and ``detail`` are its JSON body's."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


@dataclass(frozen=True)
class Box:
    """x1 y1 x2 y2 in the scan's own pixels (origin top-left)."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: str
    group: str
    score: float
    box: Box


@dataclass(frozen=True)
class DetectResult:
    """One scan's answer (the JSON body of ``POST /detect``); ``raw`` keeps every field as sent."""

    scan_id: str
    width: int
    height: int
    score_threshold: float
    detections: list[Detection]
    model: dict[str, Any]
    batch_size: int
    timings: dict[str, float]
    alarm: bool | None = None  # the answer's ``alarm`` field where the service sends one
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DetectResult:
        detections = [
            Detection(int(d["class_id"]), d["class_name"], d["group"], float(d["score"]), Box(**d["box"]))
            for d in body["detections"]
        ]
        return cls(
            scan_id=body["scan_id"],
            width=int(body["image"]["width"]),
            height=int(body["image"]["height"]),
            score_threshold=float(body["score_threshold"]),
            detections=detections,
            model=dict(body["model"]),
            batch_size=int(body["batch_size"]),
            timings=dict(body["timings"]),
            alarm=body.get("alarm"),
            raw=body,
        )


def _read_scan(scan: Scan, label: str) -> tuple[bytes, str]:
    """The bytes of one energy image and the file name sent with them."""
    if isinstance(scan, (bytes, bytearray, memoryview)):
        return bytes(scan), f"{label}.bin"
    path = Path(scan)
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


def _api_error(status: int, body: bytes, headers) -> ApiError:
    try:
        payload = json.loads(body)
        code, detail = str(payload["error"]), str(payload["detail"])
    except (ValueError, KeyError, TypeError):  # not the API's error body (a proxy's page, say)
        code, detail = "http_error", body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    retry = headers.get("Retry-After")
    return ApiError(status, code, detail, float(retry) if retry and retry.isdigit() else None)


class Client:
    """``Client("http://host:8000", api_key="...").detect("high.png", "low.png")`` -> ``DetectResult``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url {base_url!r}: give http://host:port or https://host:port")
        self.base_url, self.api_key, self.timeout = base_url.rstrip("/"), api_key, timeout
        self._url = url

    def detect(
        self,
        high: Scan,
        low: Scan,
        *,
        scan_id: str | None = None,
        score_threshold: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> DetectResult:
        """One scan (one view: a high and a low energy image) -> its detections."""
        (high_bytes, high_name), (low_bytes, low_name) = _read_scan(high, "high"), _read_scan(low, "low")
        fields = {"scan_id": scan_id, "score_threshold": score_threshold, "width": width, "height": height}
        parts = [("high", high_name, high_bytes), ("low", low_name, low_bytes)]
        parts += [(k, None, str(v).encode()) for k, v in fields.items() if v is not None]
        body, content_type = _multipart(parts)
        return DetectResult.from_json(self._post("/detect", body, content_type))

    def _post(self, path: str, body: bytes, content_type: str) -> dict[str, Any]:
        url = self._url
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname, url.port, timeout=self.timeout)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request("POST", url.path.rstrip("/") + path, body=body, headers=headers)
            response = conn.getresponse()
            status, data = response.status, response.read()
        except TimeoutError:
            raise TransportError(f"POST {self.base_url}{path}: no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"POST {self.base_url}{path}: {exc}") from None
        finally:
            conn.close()
        if status != 200:
            raise _api_error(status, data, response.headers)
        try:
            return json.loads(data)
        except ValueError:
            raise TransportError(f"POST {self.base_url}{path}: the 200 answer is not JSON") from None


class AsyncClient:
    """The asyncio twin of ``Client``: ``await AsyncClient(url, api_key=...).detect(high, low)``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        self._client = Client(base_url, api_key=api_key, timeout=timeout)

    async def detect(self, high: Scan, low: Scan, **options: Any) -> DetectResult:
        """As ``Client.detect`` (same options), in a worker thread."""
        return await asyncio.to_thread(self._client.detect, high, low, **options)
