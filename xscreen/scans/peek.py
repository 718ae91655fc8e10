"""Cheap declared-size readers: a scan file's (height, width) from its header, before any pixel is decoded.

The service reserves memory for a scan before decoding it (service/budget.py), sized by what the file
declares: PNG IHDR, the first TIFF page's shape, the .npy header, DICOS Rows x Columns, or the
width/height fields of a raw buffer. Each reader looks at the header only and never raises: a header it
cannot read gives None, and the caller reserves its own limit instead. The decoders check the same
header again (and reject what does not match), so a size read here is only a reservation, not a promise.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from xscreen.scans.dicos.files import DEFLATED_LE
from xscreen.scans.formats import NPY_MAGIC, PNG_MAGIC, TIFF_MAGICS, sniff_format

# DICOS image pixel module tags: Rows (0028,0010), Columns (0028,0011)
_ROWS_TAG, _COLUMNS_TAG = 0x00280010, 0x00280011


def _png_size(buf: bytes) -> tuple[int, int] | None:
    if len(buf) < 24 or not buf.startswith(PNG_MAGIC) or buf[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", buf[16:24])
    return int(height), int(width)


def _tiff_size(buf: bytes) -> tuple[int, int] | None:
    import tifffile

    try:  # opening parses the first page's IFD only; no strip is read
        with tifffile.TiffFile(io.BytesIO(buf)) as tif:
            shape = tuple(tif.pages[0].shape) if len(tif.pages) else ()
    except Exception:  # tifffile raises many types on damaged files; the decoder reports them
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None


def _npy_size(buf: bytes) -> tuple[int, int] | None:
    if not buf.startswith(NPY_MAGIC):
        return None
    fp = io.BytesIO(buf)
    try:
        version = np.lib.format.read_magic(fp)
        reader = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = reader(fp)
    except Exception:
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def _dicom_size(buf: bytes) -> tuple[int, int] | None:
    """Rows x Columns of a DICOS file; None for a deflated dataset, which only the bounded decoder
    inflates (pydicom would inflate all of it to read two tags)."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        fp = io.BytesIO(buf)
        read_preamble(fp, True)
        if str(_read_file_meta_info(fp).get("TransferSyntaxUID", "")) == DEFLATED_LE:
            return None
        ds = pydicom.dcmread(
            io.BytesIO(buf), force=True, stop_before_pixels=True, specific_tags=[_ROWS_TAG, _COLUMNS_TAG]
        )
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:
        return None
    return (rows, cols) if rows > 0 and cols > 0 else None


def declared_size(buf: bytes, *, dicom: bool = False) -> tuple[int, int] | None:
    """(height, width) that ``buf``'s header declares, or None when it declares none readable.

    ``dicom``: the part was sent as application/dicom (read as DICOS even without a preamble).
    """
    kind = "dicom" if dicom else sniff_format(buf)
    if kind == "png":
        return _png_size(buf)
    if kind == "tiff" and buf[:4] in TIFF_MAGICS:
        return _tiff_size(buf)
    if kind == "npy":
        return _npy_size(buf)
    if kind == "dicom":
        return _dicom_size(buf)
    return None


def declared_pixels(
    parts: tuple[bytes, bytes],
    *,
    raw_size: tuple[int, int] | None = None,
    dicom: tuple[bool, bool] = (False, False),
) -> int | None:
    """Pixels per energy image that a scan pair declares: the larger of its two parts' headers, or
    ``width x height`` for raw buffers (``raw_size`` = (width, height)); None when a part declares none."""
    if raw_size is not None:
        return int(raw_size[0]) * int(raw_size[1])
    sizes = [declared_size(buf, dicom=flag) for buf, flag in zip(parts, dicom, strict=True)]
    if any(s is None for s in sizes):
        return None
    return max(h * w for h, w in sizes)  # type: ignore[misc]
