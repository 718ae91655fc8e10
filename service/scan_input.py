"""Turn the two uploaded parts of a request into raw uint16 arrays and the converted model input."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.errors import ApiError
from training.scans import ScanError, check_pair, convert_scan, decode_raw_uint16, read_scan


@dataclass
class PreparedScan:
    high: np.ndarray  # uint16 [H, W]
    low: np.ndarray  # uint16 [H, W]
    image: np.ndarray  # float32 [H, W, 3], training.scans.convert_scan (method.md §1)
    decode_seconds: float
    convert_seconds: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.high.shape[1]), int(self.high.shape[0])


def scan_error_to_api(exc: ScanError) -> ApiError:
    """ScanError -> 413 (pixel limit), 415 (not a supported format), 400 (everything else)."""
    msg = str(exc)
    if "more than the limit of" in msg:
        return ApiError(413, "too_many_pixels", msg)
    if "unknown file format" in msg or "JPEG is 8-bit" in msg:
        return ApiError(415, "unsupported_format", msg)
    if "size mismatch" in msg:
        return ApiError(400, "scan_size_mismatch", msg)
    return ApiError(400, "invalid_scan", msg)


def prepare_scan(
    high_bytes: bytes,
    low_bytes: bytes,
    *,
    width: int | None,
    height: int | None,
    max_pixels: int,
) -> PreparedScan:
    """Decode both energy images (files, or raw little-endian uint16 with width/height), check, convert.

    Runs in a worker thread (CPU-bound); every problem with the input is an ``ApiError`` (4xx).
    """
    if (width is None) != (height is None):
        raise ApiError(400, "invalid_parameter", "raw uint16 buffers need both 'width' and 'height'")
    t0 = time.perf_counter()
    try:
        if width is not None and height is not None:
            if width * height > max_pixels:
                raise ApiError(
                    413,
                    "too_many_pixels",
                    f"{width}x{height} = {width * height} pixels, more than the limit of {max_pixels} pixels",
                )
            high = decode_raw_uint16(high_bytes, width, height, max_pixels=max_pixels)
            low = decode_raw_uint16(low_bytes, width, height, max_pixels=max_pixels)
        else:
            high = read_scan(high_bytes, name="high", max_pixels=max_pixels)
            low = read_scan(low_bytes, name="low", max_pixels=max_pixels)
        check_pair(high, low)
        t1 = time.perf_counter()
        image = convert_scan(high, low)
    except ScanError as exc:
        raise scan_error_to_api(exc) from None
    t2 = time.perf_counter()
    return PreparedScan(high, low, image, decode_seconds=t1 - t0, convert_seconds=t2 - t1)
