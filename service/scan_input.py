"""Turn the two uploaded parts of a request into raw uint16 arrays and the converted model input."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from xscreen.scans import (
    ScanError,
    ScanSizeMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    check_pair,
    convert_parallel,
    decode_raw_uint16,
    read_scan,
    sniff_format,
)
from xscreen.scans.dicos.dx import DxPair, read_dx_pair
from xscreen.scans.energy import EnergiesSwappedError, check_energy_order
from xscreen.scans.errors import ScanDeadlineError
from xscreen.service.errors import ApiError

_DECODER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="xscreen-decode")  # xscreen detect's helpers


class ScanExpiredError(Exception):
    """The request's deadline passed before this scan's decode or conversion was done (its answer, a 504,
    has been given already): the work stops at the next stage instead of converting for nobody."""


def _check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise ScanExpiredError(f"deadline passed before {stage}")


@dataclass
class PreparedScan:
    high: np.ndarray  # uint16 [H, W]
    low: np.ndarray  # uint16 [H, W]
    image: np.ndarray  # float32 [H, W, 3], xscreen.scans.convert_scan (docs/method.md §1)
    decode_seconds: float
    convert_seconds: float
    dicos: DxPair | None = None  # the DX images the scan came in as, referenced by a TDR answer

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.high.shape[1]), int(self.high.shape[0])

    def drop_image(self) -> None:
        """Let the converted image go once the model has run: the answer, the picture and a TDR need only
        the raw pair (the image is 12 bytes a pixel, three times the pair)."""
        self.image = np.empty((0, 0, 3), np.float32)


def check_formats(high_bytes: bytes, low_bytes: bytes, raw: bool, accepted: list[str] | None) -> None:
    """415 when a part's encoding is not among the accepted formats (setting XSCREEN_FORMATS)."""
    if accepted is None:
        return
    if raw:
        if "raw" not in accepted:
            raise ApiError(
                415, "unsupported_format", f"raw uint16 buffers are not accepted here (accepted: {accepted})"
            )
        return
    for label, buf in (("high", high_bytes), ("low", low_bytes)):
        kind = sniff_format(buf)
        if kind is not None and kind not in accepted:
            raise ApiError(
                415,
                "unsupported_format",
                f"{label}: {kind} files are not accepted here (accepted: {accepted})",
            )


def scan_error_to_api(exc: ScanError) -> ApiError:
    """ScanError -> 413 (pixel limit), 415 (not a supported format), 400 (everything else)."""
    msg = str(exc)
    if isinstance(exc, ScanTooLargeError):
        return ApiError(413, "too_many_pixels", msg)
    if isinstance(exc, UnsupportedScanFormatError):
        return ApiError(415, "unsupported_format", msg)
    if isinstance(exc, ScanSizeMismatchError):
        return ApiError(400, "scan_size_mismatch", msg)
    if isinstance(exc, EnergiesSwappedError):
        return ApiError(400, "energies_swapped", msg)
    return ApiError(400, "invalid_scan", msg)


def _dicom_parts(
    high_bytes: bytes, low_bytes: bytes, declared: tuple[bool, bool], raw: bool, formats: list[str] | None
) -> bool:
    """True when the parts are a DICOS DX pair (DICM preamble, or declared application/dicom)."""
    dicom = [d or sniff_format(b) == "dicom" for b, d in zip((high_bytes, low_bytes), declared, strict=True)]
    if not any(dicom):
        return False
    if formats is not None and "dicom" not in formats:
        raise ApiError(415, "unsupported_format", f"DICOS files are not accepted here (accepted: {formats})")
    if raw:
        raise ApiError(400, "invalid_parameter", "'width' and 'height' are for raw buffers, not DICOS DX")
    if not all(dicom):
        which, other = ("high", "low") if dicom[0] else ("low", "high")
        raise ApiError(
            400, "invalid_scan", f"{which} is a DICOS file but {other} is not; send both energies as DX"
        )
    return True


def prepare_scan(
    high_bytes: bytes,
    low_bytes: bytes,
    *,
    width: int | None,
    height: int | None,
    max_pixels: int,
    formats: list[str] | None = None,
    dicom: tuple[bool, bool] = (False, False),
    pool: ThreadPoolExecutor | None = None,
    deadline: float | None = None,
    check_energy: bool = True,
) -> PreparedScan:
    """Decode both energy images (files, DICOS DX, or raw little-endian uint16 with width/height), check,
    convert. ``dicom`` says which parts were sent as application/dicom (read even without a preamble).

    Runs in a worker thread (CPU-bound); every problem with the input is an ``ApiError`` (4xx).
    ``pool``: where the low image's decode and half of the conversion run (default: a module pool).
    ``deadline`` (time.monotonic()): past it, ``ScanExpiredError`` at the next stage boundary, or inside
    a decoder's bounded inflation. ``check_energy``: refuse exchanged high/low parts (docs/method.md §1a;
    for DICOS, pixels that contradict Image Type).
    """
    pool = pool or _DECODER
    _check_deadline(deadline, "decoding")
    if (width is None) != (height is None):
        raise ApiError(400, "invalid_parameter", "raw uint16 buffers need both 'width' and 'height'")
    is_dicos = _dicom_parts(high_bytes, low_bytes, dicom, width is not None, formats)
    if not is_dicos:
        check_formats(high_bytes, low_bytes, width is not None, formats)
    t0 = time.perf_counter()
    pair = None
    try:
        if is_dicos:
            pair = read_dx_pair(high_bytes, low_bytes, max_pixels=max_pixels, force=dicom, deadline=deadline)
            high, low = pair.high.pixels, pair.low.pixels
        elif width is not None and height is not None:
            if width * height > max_pixels:
                raise ApiError(
                    413,
                    "too_many_pixels",
                    f"{width}x{height} = {width * height} pixels, more than the limit of {max_pixels} pixels",
                )
            high = decode_raw_uint16(high_bytes, width, height, max_pixels=max_pixels)
            low = decode_raw_uint16(low_bytes, width, height, max_pixels=max_pixels)
        else:
            # the two images decode in parallel (OpenCV/tifffile release the GIL)
            low_future = pool.submit(
                read_scan, low_bytes, name="low", max_pixels=max_pixels, deadline=deadline
            )
            try:
                high = read_scan(high_bytes, name="high", max_pixels=max_pixels, deadline=deadline)
            except BaseException:
                wait([low_future])  # report the high image's problem first, leave nothing running
                raise
            low = low_future.result()
        check_pair(high, low)
        if check_energy:
            check_energy_order(high, low, labelled_by="Image Type (0008,0008)" if is_dicos else None)
        _check_deadline(deadline, "conversion")
        t1 = time.perf_counter()
        image = convert_parallel(high, low, pool)
    except ScanDeadlineError as exc:
        raise ScanExpiredError(str(exc)) from None
    except ScanError as exc:
        raise scan_error_to_api(exc) from None
    t2 = time.perf_counter()
    return PreparedScan(high, low, image, decode_seconds=t1 - t0, convert_seconds=t2 - t1, dicos=pair)
