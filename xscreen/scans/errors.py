"""The scan layer's errors: every unusable scan raises one of these, with one line saying why."""

from __future__ import annotations

from xscreen.errors import XscreenError


class ScanError(XscreenError):
    """A raw scan that cannot be used: unreadable, wrong format, wrong bit depth or size."""


class ScanTooLargeError(ScanError):
    """More pixels than the configured limit (checked from the header, before decoding)."""


class UnsupportedScanFormatError(ScanError):
    """Bytes that are none of the accepted encodings (16-bit PNG, 16-bit TIFF, .npy, DICOS DX pair), or a
    DICOS transfer syntax that is not decoded here."""


class ScanSizeMismatchError(ScanError):
    """The high- and low-energy images differ in size."""


class ScanHeaderMismatchError(ScanError):
    """Compressed data that disagrees with the file's header: more image data than declared, or a frame
    header (JPEG, JPEG-LS, RLE) whose size or layout differs from the header's. Refused before decoding."""


class ScanParameterError(ScanError):
    """A parameter sent with the scan does not fit it: a raw buffer's width without its height (or the
    reverse), or sizes sent with a DICOS DX pair."""


class ScanDeadlineError(ScanError):
    """Decoding ran past the caller's deadline (a ``time.monotonic()`` value) and was stopped."""


def _label(name: str | None) -> str:
    """'name: ' to start an error message with, or nothing."""
    return f"{name}: " if name else ""
