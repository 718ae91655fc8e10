"""Bounded decoding: capped inflation, a deadline, and compressed headers checked before any decoder runs.

Every decoder of a raw scan first compares what the compressed stream itself declares (a PNG's IDAT
size, a JPEG or JPEG-LS frame header, an RLE segment table, a deflated dataset's inflated size) with
the size the file's header declared and the pixel limit already checked, and only then decodes. So the
work and memory a file can cost are bounded by its declared pixels, never by its compression ratio.

Decisions:

- PNG: the IDAT zlib stream is inflated here, in steps, to exactly the size the IHDR declares
  (height x (1 + width x 2) bytes of filtered rows for 16-bit grey; the Adam7 total when interlaced).
  More output than that, or any byte after the zlib stream's end, is refused as "more image data than
  its header declares": no valid encoder writes it, and refusing costs only the declared image's
  inflation. Less is "truncated". The checked rows are handed to OpenCV as a minimal PNG (IHDR, one
  IDAT of stored deflate blocks, IEND), so OpenCV only un-filters them; ancillary chunks are dropped
  (a raw scan's pixels do not depend on them, and compressed ones such as zTXt / iCCP are never
  inflated). At most 64 + (declared row bytes) / 256 chunks are walked: encoders write IDAT chunks of
  8 KiB or more, and a file of millions of empty chunks would otherwise cost seconds to walk.
- Deflated DICOM datasets inflate to at most ``deflate_cap(max_pixels)`` = 2 bytes x max_pixels +
  1 MiB of metadata (``METADATA_ALLOWANCE``); past that the file is refused as too large.
- A deadline (a ``time.monotonic()`` value) is checked between inflation steps and before each
  decoder call; past it ``ScanDeadlineError`` is raised.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from xscreen.scans.errors import (
    ScanDeadlineError,
    ScanError,
    ScanHeaderMismatchError,
    ScanTooLargeError,
    _label,
)

# Bytes a deflated DICOM dataset may hold besides its pixels (tags, UIDs, sequences).
METADATA_ALLOWANCE = 1 << 20
# Output bytes produced per inflation step (between two deadline checks) and input bytes fed per step.
INFLATE_STEP = 1 << 22
_FEED = 1 << 16
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_deadline(deadline: float | None, name: str | None) -> None:
    """Raise ``ScanDeadlineError`` when ``deadline`` (a ``time.monotonic()`` value) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise ScanDeadlineError(f"{_label(name)}decoding ran past its deadline and was stopped")


def deflate_cap(max_pixels: int) -> int:
    """Most bytes a deflated DICOM dataset may inflate to: its pixels at 2 bytes plus 1 MiB of metadata."""
    return 2 * int(max_pixels) + METADATA_ALLOWANCE


def inflate_into(
    data: bytes,
    sink: Callable[[bytes], None],
    *,
    wbits: int,
    deadline: float | None,
    name: str | None,
    what: str,
) -> int:
    """Inflate ``data`` (zlib or raw deflate, by ``wbits``) into ``sink`` in pieces of at most
    ``INFLATE_STEP`` bytes, checking ``deadline`` before each -> the number of bytes after the stream's end.
    ``sink`` may raise to stop early. A damaged or unfinished stream raises ``ScanError``."""
    d = zlib.decompressobj(wbits)
    view = memoryview(data)
    for start in range(0, max(len(view), 1), _FEED):
        tail = view[start : start + _FEED]
        fed_to = start + len(tail)
        while True:
            check_deadline(deadline, name)
            try:
                piece = d.decompress(tail, INFLATE_STEP)
            except zlib.error as exc:
                raise ScanError(f"{_label(name)}truncated or corrupt {what} ({exc})") from None
            if piece:
                sink(piece)
            if d.eof:
                return len(d.unused_data) + len(view) - fed_to
            tail = d.unconsumed_tail
            if not tail and len(piece) < INFLATE_STEP:
                break
    raise ScanError(f"{_label(name)}truncated {what} (its zlib stream does not end)")


def inflate_capped(
    data: bytes, cap: int, *, wbits: int, deadline: float | None, name: str | None, what: str
) -> bytes:
    """Inflate ``data`` to at most ``cap`` bytes in deadline-checked steps; more: ``ScanTooLargeError``.
    Bytes after the stream's end are ignored (they cost nothing to skip)."""
    parts: list[bytes] = []
    total = 0

    def sink(piece: bytes) -> None:
        nonlocal total
        total += len(piece)
        if total > cap:
            raise ScanTooLargeError(
                f"{_label(name)}{what} inflates to more than {cap} bytes "
                "(2 bytes per pixel of the pixel limit + 1 MiB); refused"
            )
        parts.append(piece)

    inflate_into(data, sink, wbits=wbits, deadline=deadline, name=name, what=what)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# PNG


def png_rows_size(width: int, height: int, bytes_per_pixel: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (a filter byte per row) that a PNG's IHDR declares."""
    if not interlaced:
        return height * (1 + width * bytes_per_pixel)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + w * bytes_per_pixel)
    return total


def _png_chunk(kind: bytes, data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A PNG chunk as its four parts (length, type, data, CRC), for one ``b"".join`` without copies."""
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _png_idat(buf: bytes, max_chunks: int, name: str | None) -> bytes:
    """The concatenated IDAT payloads of a PNG (IHDR's CRC checked); one pass over at most ``max_chunks``."""
    view, size, pos, spans = memoryview(buf), len(buf), 8, []
    for _ in range(max_chunks):
        if pos + 12 > size:
            raise ScanError(f"{_label(name)}truncated PNG (no IEND chunk)")
        (length,) = struct.unpack_from(">I", buf, pos)
        end = pos + 12 + length
        if end > size:
            what = bytes(view[pos + 4 : pos + 8]).decode("latin-1")
            raise ScanError(
                f"{_label(name)}truncated PNG (the {what!r} chunk runs past the end of the file: "
                "cut short or corrupt)"
            )
        if buf.startswith(b"IDAT", pos + 4):
            spans.append((pos + 8, end - 4))
        elif buf.startswith(b"IEND", pos + 4):
            break
        elif buf.startswith(b"IHDR", pos + 4):  # IDAT payloads are checked by the zlib stream's Adler-32
            (crc,) = struct.unpack_from(">I", buf, end - 4)
            if zlib.crc32(view[pos + 4 : end - 4]) != crc:
                raise ScanError(f"{_label(name)}corrupt PNG (IHDR chunk CRC mismatch)")
        pos = end
    else:
        raise ScanError(f"{_label(name)}PNG has more than {max_chunks} chunks for its image size; refused")
    if not spans:
        raise ScanError(f"{_label(name)}corrupt PNG (no IDAT chunk)")
    return b"".join(view[a:b] for a, b in spans)


def decode_png_bounded(
    buf: bytes, width: int, height: int, deadline: float | None, name: str | None
) -> np.ndarray:
    """A 16-bit greyscale PNG whose IHDR (``width`` x ``height``) was checked -> uint16 [H, W].

    Inflates the IDAT stream to exactly the declared size before OpenCV sees any of it."""
    import cv2

    interlaced = buf[28] == 1
    if buf[28] not in (0, 1) or buf[26] != 0 or buf[27] != 0:
        raise ScanError(f"{_label(name)}corrupt PNG (unknown compression, filter or interlace method)")
    need = png_rows_size(width, height, 2, interlaced)
    stream = _png_idat(buf, 64 + need // 256, name)
    more = f"{_label(name)}PNG holds more image data than its header declares ({width}x{height}); refused"
    parts: list[bytes] = []
    total = 0

    def sink(piece: bytes) -> None:
        nonlocal total
        total += len(piece)
        if total > need:
            raise ScanHeaderMismatchError(more)
        parts.append(piece)

    what = "PNG image data"
    trailing = inflate_into(stream, sink, wbits=zlib.MAX_WBITS, deadline=deadline, name=name, what=what)
    if total < need:
        raise ScanError(f"{_label(name)}truncated PNG ({total} bytes of image rows, {need} declared)")
    if trailing:
        raise ScanHeaderMismatchError(more)
    check_deadline(deadline, name)
    stored = zlib.compress(b"".join(parts), 0)  # stored blocks: OpenCV only copies them
    parts.clear()
    png = b"".join(
        (buf[:8], *_png_chunk(b"IHDR", buf[16:29]), *_png_chunk(b"IDAT", stored), *_png_chunk(b"IEND", b""))
    )
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.shape != (height, width):
        raise ScanError(f"{_label(name)}corrupt PNG (decoding failed)")
    return img


# ---------------------------------------------------------------------------------------------
# DICOM encapsulated frames: the frame's own header is compared with Rows x Columns before decoding.

# Start-of-frame markers (0xFFC0..0xFFCF without DHT 0xC4, JPG 0xC8, DAC 0xCC) and JPEG-LS's SOF55.
_SOF_MARKERS = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)} | {0xF7}
_SOF3, _SOF55, _LSE, _SOS = 0xC3, 0xF7, 0xF8, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0..7: markers without a length


def encapsulated_frame(pixel_data: bytes, name: str | None) -> bytes:
    """The one frame of encapsulated Pixel Data: a Basic Offset Table of at most one entry (0), then one
    or more fragments (joined). Anything else is refused as corrupt."""
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    fp = io.BytesIO(pixel_data)
    try:
        offsets = parse_basic_offsets(fp)
        fragments = list(generate_fragments(fp))
    except Exception as exc:  # pydicom raises ValueError / struct.error on damaged items
        raise ScanError(f"{_label(name)}corrupt encapsulated pixel data ({exc})") from None
    if offsets not in ([], [0]):
        raise ScanError(
            f"{_label(name)}encapsulated pixel data lists {len(offsets)} frame offsets; "
            "a DX image is one frame"
        )
    if not fragments or not any(fragments):
        raise ScanError(f"{_label(name)}encapsulated pixel data holds no fragment")
    return b"".join(fragments)


def _jpeg_segments(frame: bytes, kind: str, name: str | None) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each marker segment of a JPEG / JPEG-LS frame, from SOI up to and with SOS."""
    if frame[:2] != b"\xff\xd8":
        raise ScanError(f"{_label(name)}corrupt {kind} pixel data (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise ScanError(f"{_label(name)}corrupt {kind} pixel data (no marker at byte {pos})")
        marker = frame[pos + 1]
        if marker == 0xFF or marker in _STANDALONE:  # fill byte, or a marker without a length
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if length < 2 or pos + 2 + length > len(frame):
            raise ScanError(f"{_label(name)}truncated or corrupt {kind} pixel data (bad marker segment)")
        yield marker, frame[pos + 4 : pos + 2 + length]
        if marker == _SOS:
            return
        pos += 2 + length
    raise ScanError(f"{_label(name)}truncated {kind} pixel data (no start-of-scan marker)")


def check_jpeg_frame(
    frame: bytes, *, jpegls: bool, rows: int, cols: int, bits: int, name: str | None
) -> None:
    """Refuse a JPEG Lossless (SOF3) or JPEG-LS (SOF55) frame whose header differs from the DX header:
    one frame header of the right kind, ``cols`` x ``rows`` pixels, ``bits`` of precision, 1 component."""
    kind, want = ("JPEG-LS", _SOF55) if jpegls else ("JPEG Lossless", _SOF3)
    sof = None
    for marker, payload in _jpeg_segments(frame, kind, name):
        if marker in _SOF_MARKERS:
            if marker != want or sof is not None:
                what = "a second frame header" if sof is not None else f"frame header 0xFF{marker:02X}"
                raise ScanHeaderMismatchError(
                    f"{_label(name)}{kind} codestream has {what}; the transfer syntax needs one "
                    f"0xFF{want:02X} (SOF{3 if want == _SOF3 else 55}) frame"
                )
            if len(payload) < 6:
                raise ScanError(f"{_label(name)}corrupt {kind} pixel data (short frame header)")
            sof = struct.unpack_from(">BHHB", payload)
        elif marker == _LSE and payload[:1] == b"\x04":
            raise ScanHeaderMismatchError(
                f"{_label(name)}JPEG-LS codestream redefines the image size "
                "(LSE oversize dimensions); refused"
            )
    if sof is None:
        raise ScanError(f"{_label(name)}corrupt {kind} pixel data (no frame header before the scan)")
    precision, height, width, components = sof
    if (height, width, precision, components) != (rows, cols, bits, 1):
        raise ScanHeaderMismatchError(
            f"{_label(name)}{kind} codestream declares {width}x{height} pixels, {precision} bits, "
            f"{components} component(s), but the DX header says {cols}x{rows}, {bits} bits, 1 sample; "
            "refused before decoding"
        )


def decode_rle_frame(
    frame: bytes, *, rows: int, cols: int, deadline: float | None, name: str | None
) -> np.ndarray:
    """A DICOM RLE Lossless frame of 16-bit single-sample pixels -> uint16 [rows, cols].

    The 64-byte header must list exactly 2 segments (high bytes, then low bytes) at increasing offsets
    inside the frame; each segment (PackBits) decodes into a buffer of exactly rows x cols bytes
    (imagecodecs), so a segment that would expand further is refused instead of growing."""
    import imagecodecs

    if len(frame) < 64:
        raise ScanError(f"{_label(name)}truncated RLE pixel data (no 64-byte segment header)")
    count, *offsets = struct.unpack_from("<16I", frame)
    if count != 2:
        raise ScanHeaderMismatchError(
            f"{_label(name)}RLE frame has {count} segment(s); 16-bit single-sample pixels need exactly 2"
        )
    first, second = offsets[:2]
    if not (first == 64 < second < len(frame)):
        raise ScanError(
            f"{_label(name)}corrupt RLE pixel data "
            f"(segment offsets {first}, {second} in a {len(frame)}-byte frame)"
        )
    need = rows * cols
    planes = []
    for start, end in ((first, second), (second, len(frame))):
        check_deadline(deadline, name)
        try:
            plane = imagecodecs.packbits_decode(frame[start:end], out=need)
        except Exception as exc:  # IMCD_OUTPUT_TOO_SMALL: the segment expands past rows x cols
            raise ScanHeaderMismatchError(
                f"{_label(name)}RLE segment decodes to more than the {need} bytes that Rows x Columns "
                f"declare; refused ({exc})"
            ) from None
        if len(plane) != need:
            raise ScanError(
                f"{_label(name)}truncated RLE pixel data ({len(plane)} of {need} bytes in a segment)"
            )
        planes.append(np.frombuffer(plane, np.uint8).astype(np.uint16))
    return ((planes[0] << 8) | planes[1]).reshape(rows, cols)
