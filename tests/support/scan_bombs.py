"""Builders of DX files, PNG streams and decompression bombs for the bounded-decoding tests: the decoders
(tests/scans/test_scans_bounded.py) and a real server (tests/service/test_hostile_http.py) get the same."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble

from xscreen.scans.dicos import dx, files

RNG = np.random.default_rng(24)
HIGH = RNG.integers(0, 65536, (37, 53), dtype=np.uint16)
LOW = RNG.integers(0, 65536, (37, 53), dtype=np.uint16)
SMALL = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)


def dx_file(pixels: np.ndarray, syntax: str, energy: str = "HIGH") -> bytes:
    return dx.write_dx(
        pixels, energy=energy, study_uid="1.2.3.4", series_uid="1.2.3.5", transfer_syntax=syntax
    )


def dx_with_frame(syntax: str, frame: bytes, rows: int = 16, cols: int = 16) -> bytes:
    """A DX file of ``rows`` x ``cols`` whose encapsulated pixel data is the one ``frame`` given."""
    ds = pydicom.dcmread(io.BytesIO(dx_file(np.zeros((rows, cols), np.uint16), syntax)))
    ds.PixelData = encapsulate([frame])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def patch_sof(frame: bytes, marker: bytes, height: int, width: int) -> bytes:
    """``frame`` with the height and width of its first ``marker`` frame header replaced."""
    out = bytearray(frame)
    struct.pack_into(">HH", out, out.index(marker) + 5, height, width)
    return bytes(out)


def split_meta(buf: bytes) -> tuple[bytes, bytes]:
    """A Part-10 file -> (preamble + file meta, the dataset as a C-STORE carries it)."""
    fp = io.BytesIO(buf)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return buf[: fp.tell()], buf[fp.tell() :]


def rle_frame(high_bytes: bytes, low_bytes: bytes, count: int = 2) -> bytes:
    """An RLE Lossless frame with two given (already encoded) segments and ``count`` in its header."""
    header = struct.pack("<16I", count, 64, 64 + len(high_bytes), *([0] * 13))
    return header + high_bytes + low_bytes


def deflated_bomb(extra: int) -> tuple[bytes, bytes]:
    """A 16x16 deflated DX whose dataset inflates to ``extra`` bytes more (a private OB element of zeros)
    -> (the Part-10 file, the raw deflated dataset a C-STORE would carry)."""
    meta, body = split_meta(dx_file(SMALL, files.DEFLATED_LE))
    plain = zlib.decompress(body, -zlib.MAX_WBITS)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(plain), z.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, extra))]
    zeros = bytes(1 << 24)
    for _ in range(extra // len(zeros)):
        parts.append(z.compress(zeros))
    parts.append(z.flush())
    raw = b"".join(parts)
    return meta + raw, raw


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_stream(img: np.ndarray, stream: bytes, interlace: int = 0) -> bytes:
    h, w = img.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")
    )


def filtered_rows(img: np.ndarray) -> bytes:
    """Scanlines with filter type 0 (none): a zero byte, then big-endian 16-bit pixels, per row."""
    rows = img.astype(">u2").view(np.uint8).reshape(img.shape[0], -1)
    return np.hstack([np.zeros((img.shape[0], 1), np.uint8), rows]).tobytes()


def adam7_rows(img: np.ndarray) -> bytes:
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    return b"".join(
        filtered_rows(img[y0::dy, x0::dx]) for x0, y0, dx, dy in passes if img[y0::dy, x0::dx].size
    )
