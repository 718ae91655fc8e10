"""The scan layer of training and the service: formats, pair checks, Eq. 1 conversion, the picture.

Everything that reads, checks or converts a dual-energy scan lives here, below both ``xscreen.training``
and ``xscreen.service`` (the import-linter contracts in pyproject.toml keep it that way).
"""

from xscreen.scans.convert import SPLIT_CONVERT_ROWS, check_pair, convert_parallel, convert_scan
from xscreen.scans.formats import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    NPY_MAGIC,
    PNG_MAGIC,
    TIFF_MAGICS,
    ScanDeadlineError,
    ScanError,
    ScanHeaderMismatchError,
    ScanSizeMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    decode_raw_uint16,
    quantise_converted,
    read_converted,
    read_scan,
    sniff_format,
    write_converted,
    write_raw_png,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "NPY_MAGIC",
    "PNG_MAGIC",
    "SPLIT_CONVERT_ROWS",
    "TIFF_MAGICS",
    "ScanDeadlineError",
    "ScanError",
    "ScanHeaderMismatchError",
    "ScanSizeMismatchError",
    "ScanTooLargeError",
    "UnsupportedScanFormatError",
    "check_pair",
    "convert_parallel",
    "convert_scan",
    "decode_raw_uint16",
    "quantise_converted",
    "read_converted",
    "read_scan",
    "sniff_format",
    "write_converted",
    "write_raw_png",
]
