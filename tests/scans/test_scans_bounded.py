"""Bounded decoding (issue #24 item 1): every decompression bomb is refused from what its compressed stream
declares, fast and without memory growth (each decode runs in a fresh process that reports its peak RSS),
while valid files of every format and DICOS transfer syntax still decode bit-exactly."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.encaps import encapsulate

from tests.support.scan_bombs import (
    HIGH,
    LOW,
    SMALL,
    adam7_rows,
    deflated_bomb,
    dx_file,
    dx_with_frame,
    filtered_rows,
    patch_sof,
    png_chunk,
    png_with_stream,
    rle_frame,
    split_meta,
)
from xscreen.scans import (
    ScanDeadlineError,
    ScanError,
    ScanHeaderMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    read_scan,
)
from xscreen.scans.bounded import METADATA_ALLOWANCE, deflate_cap, png_rows_size
from xscreen.scans.dicos import dx, files

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30

# Runs one decode in a fresh interpreter (libraries imported first) and prints what it cost.
_PROBE = """
import json, os, sys, time
import cv2, imagecodecs, pydicom, pydicom.encaps, pydicom.filereader, tifffile
from tests.support.hostile import PeakRss
from xscreen.scans import read_scan
from xscreen.scans.dicos.dx import dx_from_encoded, read_dx
data = open(sys.argv[1], "rb").read()
call = {call}
out = {{"error": None, "message": ""}}
with PeakRss(os.getpid()) as peak:
    t0 = time.perf_counter()
    try:
        call(data)
    except Exception as exc:
        out["error"], out["message"] = type(exc).__name__, str(exc)
    out["seconds"] = time.perf_counter() - t0
out["growth_mb"] = peak.growth_mb
print(json.dumps(out))
"""


def probe(tmp_path: Path, data: bytes, call: str) -> dict:
    """Decode ``data`` with ``call`` (a lambda on the bytes) in a subprocess -> error, seconds, growth_mb."""
    path = tmp_path / "bomb.bin"
    path.write_bytes(data)
    code = _PROBE.format(call=call)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_refused(result: dict, error: type, words: str, seconds: float = 2.0, mb: float = 150.0) -> None:
    assert result["error"] == error.__name__, result
    assert words in result["message"], result
    assert result["seconds"] < seconds, result
    assert result["growth_mb"] < mb, result


# ---------------------------------------------------------------------------------------------
# DICOS: encapsulated frames whose own header disagrees with Rows x Columns.


@pytest.mark.parametrize(
    ("syntax", "kind"), [(files.JPEG_LS_LOSSLESS, "JPEG-LS"), (files.JPEG_LOSSLESS, "JPEG Lossless")]
)
def test_jpeg_frame_declaring_40000_square_in_a_16_square_dx_is_refused_before_decoding(
    tmp_path, syntax, kind
):
    if syntax == files.JPEG_LS_LOSSLESS:
        frame = patch_sof(imagecodecs.jpegls_encode(SMALL, level=0), b"\xff\xf7", 40000, 40000)
    else:
        small = imagecodecs.jpeg8_encode(SMALL, lossless=True, predictor=1, bitspersample=16)
        frame = patch_sof(small, b"\xff\xc3", 40000, 40000)
    bomb = dx_with_frame(syntax, frame)
    assert len(bomb) < 20_000
    result = probe(tmp_path, bomb, "lambda b: read_dx(b, name='high')")
    assert_refused(result, ScanHeaderMismatchError, f"high: {kind} codestream declares 40000x40000 pixels")
    assert "but the DX header says 16x16, 16 bits, 1 sample; refused before decoding" in result["message"]
    raw = split_meta(bomb)[1]
    result = probe(tmp_path, raw, f"lambda b: dx_from_encoded(b, {syntax!r}, name='c-store')")
    assert_refused(result, ScanHeaderMismatchError, f"c-store: {kind} codestream declares 40000x40000")


def test_jpeg_frame_precision_components_and_frame_kind_must_match():
    ls = imagecodecs.jpegls_encode(SMALL, level=0)
    bad_bits = bytearray(ls)
    bad_bits[bad_bits.index(b"\xff\xf7") + 4] = 12
    with pytest.raises(ScanHeaderMismatchError, match="declares 16x16 pixels, 12 bits, 1 component"):
        dx.read_dx(dx_with_frame(files.JPEG_LS_LOSSLESS, bytes(bad_bits)))
    baseline = imagecodecs.jpeg8_encode(SMALL.astype(np.uint8))  # SOF0: lossy, 8-bit
    with pytest.raises(
        ScanHeaderMismatchError, match=r"has frame header 0xFFC0; .* one 0xFFC3 \(SOF3\) frame"
    ):
        dx.read_dx(dx_with_frame(files.JPEG_LOSSLESS, bytes(baseline)))
    with pytest.raises(ScanHeaderMismatchError, match=r"JPEG-LS codestream has frame header 0xFFC3"):
        dx.read_dx(
            dx_with_frame(
                files.JPEG_LS_LOSSLESS, imagecodecs.jpeg8_encode(SMALL, lossless=True, bitspersample=16)
            )
        )
    with pytest.raises(ScanError, match="corrupt JPEG-LS pixel data \\(no start-of-image marker\\)"):
        dx.read_dx(dx_with_frame(files.JPEG_LS_LOSSLESS, b"\x00" * 64))


def test_multi_frame_and_fragment_structure_are_checked():
    good = dx_file(SMALL, files.JPEG_LS_LOSSLESS)
    ds = pydicom.dcmread(io.BytesIO(good))
    frame = imagecodecs.jpegls_encode(SMALL, level=0)
    ds.PixelData = encapsulate([bytes(frame), bytes(frame)], has_bot=True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ScanError, match="lists 2 frame offsets; a DX image is one frame"):
        dx.read_dx(out.getvalue())
    with pytest.raises(ScanError, match="holds 2 frames; one energy image is one frame"):
        dx.read_dx(_edit(good, NumberOfFrames=2))
    ds = pydicom.dcmread(io.BytesIO(good))
    ds.PixelData = ds.PixelData[:-8]  # no sequence delimiter, last item cut
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ScanError, match="truncated or corrupt"):
        dx.read_dx(out.getvalue())


def _edit(buf: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(buf))
    for key, value in changes.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_rle_frame_needs_exactly_two_segments(tmp_path):
    seg = imagecodecs.packbits_encode(bytes(256))
    for count in (1, 3):
        with pytest.raises(
            ScanHeaderMismatchError, match=f"RLE frame has {count} segment\\(s\\); .* exactly 2"
        ):
            dx.read_dx(dx_with_frame(files.RLE_LOSSLESS, rle_frame(seg, seg, count)))
    bad = bytearray(rle_frame(seg, seg))
    struct.pack_into("<I", bad, 8, 10_000)
    with pytest.raises(ScanError, match="corrupt RLE pixel data \\(segment offsets 64, 10000"):
        dx.read_dx(dx_with_frame(files.RLE_LOSSLESS, bytes(bad)))
    with pytest.raises(ScanError, match="truncated RLE pixel data \\(255 of 256 bytes"):
        dx.read_dx(dx_with_frame(files.RLE_LOSSLESS, rle_frame(seg, imagecodecs.packbits_encode(bytes(255)))))


def test_rle_segment_expanding_past_rows_times_columns_is_refused(tmp_path):
    # 2-byte replicate runs of 128 bytes: 8 MB of segment would expand to 512 MiB in pydicom's decoder.
    bomb = dx_with_frame(
        files.RLE_LOSSLESS, rle_frame(b"\x81\x00" * (4 << 20), imagecodecs.packbits_encode(bytes(256)))
    )
    result = probe(tmp_path, bomb, "lambda b: read_dx(b, name='low')")
    assert_refused(result, ScanHeaderMismatchError, "low: RLE segment decodes to more than the 256 bytes")


# ---------------------------------------------------------------------------------------------
# DICOS: deflated datasets.


def test_deflate_cap_formula():
    assert METADATA_ALLOWANCE == 1 << 20
    assert deflate_cap(50_000_000) == 100_000_000 + (1 << 20)


def test_deflated_dx_inflating_to_512_mib_is_refused_at_the_cap(tmp_path):
    bomb, raw = deflated_bomb(512 << 20)
    assert len(bomb) < 1_000_000
    cap = deflate_cap(50_000_000)
    words = f"deflated DICOM dataset inflates to more than {cap} bytes"
    assert_refused(probe(tmp_path, bomb, "lambda b: read_dx(b, name='high')"), ScanTooLargeError, words)
    call = f"lambda b: dx_from_encoded(b, {files.DEFLATED_LE!r}, name='c-store')"
    assert_refused(probe(tmp_path, raw, call), ScanTooLargeError, "c-store: " + words)
    small = probe(tmp_path, bomb, "lambda b: read_dx(b, max_pixels=1_000_000)")
    assert_refused(small, ScanTooLargeError, f"more than {deflate_cap(1_000_000)} bytes", mb=30.0)


def test_deflated_dx_truncated_or_corrupt():
    meta, body = split_meta(dx_file(SMALL, files.DEFLATED_LE))
    with pytest.raises(
        ScanError, match="truncated deflated DICOM dataset \\(its zlib stream does not end\\)"
    ):
        dx.read_dx(meta + body[: len(body) // 2])
    with pytest.raises(ScanError, match="truncated or corrupt deflated DICOM dataset"):
        dx.dx_from_encoded(b"\xff" * 64, files.DEFLATED_LE)


# ---------------------------------------------------------------------------------------------
# PNG


def test_png_with_a_gib_of_extra_image_data_is_refused(tmp_path):
    img = SMALL[:, :].copy()
    z = zlib.compressobj(9)
    parts = [z.compress(filtered_rows(img))]
    zeros = bytes(1 << 24)
    parts += [z.compress(zeros) for _ in range(GIB // len(zeros))]
    bomb = png_with_stream(img, b"".join(parts) + z.flush())
    assert len(bomb) < 8_000_000
    result = probe(tmp_path, bomb, "lambda b: read_scan(b, name='high')")
    assert_refused(
        result, ScanHeaderMismatchError, "high: PNG holds more image data than its header declares (16x16)"
    )


def test_png_trailing_and_truncated_image_data():
    rows = filtered_rows(HIGH)
    assert len(rows) == png_rows_size(53, 37, 2, False)
    with pytest.raises(ScanHeaderMismatchError, match="PNG holds more image data than its header declares"):
        read_scan(png_with_stream(HIGH, zlib.compress(rows) + b"\0" * 10))
    with pytest.raises(ScanError, match=r"truncated PNG \(2000 bytes of image rows, 3959 declared\)"):
        read_scan(png_with_stream(HIGH, zlib.compress(rows[:2000])))
    with pytest.raises(ScanError, match="truncated PNG image data \\(its zlib stream does not end\\)"):
        read_scan(png_with_stream(HIGH, zlib.compress(rows)[:-20]))
    good = png_with_stream(HIGH, zlib.compress(rows))
    bad_ihdr = bytearray(good)
    bad_ihdr[19] ^= 1  # the width's low byte: IHDR's CRC no longer matches
    with pytest.raises(ScanError, match="corrupt PNG \\(IHDR chunk CRC mismatch\\)"):
        read_scan(bytes(bad_ihdr))
    with pytest.raises(ScanError, match="truncated PNG \\(the 'IDAT' chunk runs past the end of the file"):
        read_scan(good[:60] + bytes(20) + good[-12:])
    empties = good[:33] + png_chunk(b"IDAT", b"") * 1_000_000 + good[33:]  # 12 MB of empty chunks
    t0 = time.perf_counter()
    with pytest.raises(ScanError, match=r"PNG has more than 79 chunks for its image size; refused"):
        read_scan(empties)
    assert time.perf_counter() - t0 < 0.05  # walking them all took 9.6 s
    bad_idat = bytearray(good)
    bad_idat[len(good) // 2] ^= 0x55  # inside the IDAT payload: the zlib stream breaks or its Adler-32 fails
    with pytest.raises(ScanError, match="truncated or corrupt PNG image data"):
        read_scan(bytes(bad_idat))


def test_png_valid_plain_interlaced_and_multi_idat_decode_bit_exactly():
    np.testing.assert_array_equal(read_scan(cv2.imencode(".png", HIGH)[1].tobytes()), HIGH)
    for img in (HIGH, SMALL, HIGH[:3, :5], HIGH[:2, :2]):
        assert len(adam7_rows(img)) == png_rows_size(img.shape[1], img.shape[0], 2, True)
        np.testing.assert_array_equal(read_scan(png_with_stream(img, zlib.compress(adam7_rows(img)), 1)), img)
    stream = zlib.compress(filtered_rows(HIGH))
    split = (
        png_with_stream(HIGH, stream[:100])[:-12] + png_chunk(b"IDAT", stream[100:]) + png_chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(read_scan(split), HIGH)
    text = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(1 << 24)))  # ancillary: never inflated
    with_text = split[:33] + text + split[33:]
    np.testing.assert_array_equal(read_scan(with_text), HIGH)


# ---------------------------------------------------------------------------------------------
# TIFF and .npy


def test_tiff_deflate_strip_bomb_is_bounded(tmp_path):
    z = zlib.compressobj(9)
    bomb_strip = b"".join(z.compress(bytes(1 << 24)) for _ in range(GIB >> 24)) + z.flush()
    out = io.BytesIO()
    tifffile.imwrite(
        out, iter([bomb_strip]), shape=(64, 64), dtype=np.uint16, compression="zlib", rowsperstrip=64
    )
    result = probe(tmp_path, out.getvalue(), "lambda b: read_scan(b, name='high')")
    assert_refused(result, ScanError, "high: truncated or corrupt TIFF")


def test_tiff_tile_larger_than_the_image_is_refused(tmp_path):
    tile = 16384  # one tile of 512 MiB declared for a 64x64 image
    z = zlib.compressobj(9)
    data = b"".join(z.compress(bytes(1 << 24)) for _ in range(tile * tile * 2 >> 24)) + z.flush()
    out = io.BytesIO()
    tifffile.imwrite(
        out, iter([data]), shape=(64, 64), dtype=np.uint16, compression="zlib", tile=(tile, tile)
    )
    result = probe(tmp_path, out.getvalue(), "lambda b: read_scan(b, name='high')")
    assert_refused(
        result, ScanHeaderMismatchError, "high: TIFF tiles are 16384x16384 pixels, larger than the 64x64"
    )


def test_tiff_with_thousands_of_pages_opens_only_the_first(tmp_path):
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as tif:  # an LSM tag makes tifffile index every page unless told not to
        tif.write(
            SMALL, compression="zlib", extratags=[(34412, "B", 512, bytes(512), True)], contiguous=False
        )
        for _ in range(30_000):
            tif.write(np.zeros((2, 2), np.uint16), contiguous=False)
    result = probe(tmp_path, out.getvalue(), "lambda b: read_scan(b)")
    assert result["error"] is None and result["seconds"] < 0.3 and result["growth_mb"] < 50, result


def test_tiff_compressions_outside_the_list_are_unsupported():
    out = io.BytesIO()
    tifffile.imwrite(out, HIGH, compression="zstd")
    with pytest.raises(UnsupportedScanFormatError, match="TIFF compression 50000 is not decoded here"):
        read_scan(out.getvalue())


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "packbits"])
@pytest.mark.parametrize("tile", [None, (16, 16)])
def test_tiff_valid_files_decode_bit_exactly(compression, tile):
    out = io.BytesIO()
    tifffile.imwrite(out, HIGH, compression=compression, tile=tile, predictor=compression == "zlib" or None)
    np.testing.assert_array_equal(read_scan(out.getvalue()), HIGH)


def test_npy_header_is_checked_before_the_array_is_read(tmp_path):
    out = io.BytesIO()
    np.save(out, HIGH)
    np.testing.assert_array_equal(read_scan(out.getvalue()), HIGH)
    header = b"{'descr': '<u2', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    fake = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117) + b"\n"
    result = probe(tmp_path, fake, "lambda b: read_scan(b)")
    assert_refused(result, ScanTooLargeError, "image is 1000000x1000000 = 1000000000000 pixels", mb=20)
    huge = b"\x93NUMPY\x02\x00" + struct.pack("<I", 200_000) + b"{" + b" " * 199_998 + b"\n"
    with pytest.raises(ScanError, match="corrupt .npy header"):
        read_scan(huge)


# ---------------------------------------------------------------------------------------------
# Valid DICOS in every transfer syntax, as files and as C-STORE datasets.


@pytest.mark.parametrize("syntax", list(files.TRANSFER_SYNTAXES))
def test_every_transfer_syntax_decodes_bit_exactly_as_file_and_as_encoded_dataset(syntax):
    high, low = dx.write_dx_pair(HIGH, LOW, transfer_syntax=syntax)
    pair = dx.read_dx_pair(high, low, deadline=time.monotonic() + 30)
    np.testing.assert_array_equal(pair.high.pixels, HIGH)
    np.testing.assert_array_equal(pair.low.pixels, LOW)
    for buf, img in ((high, HIGH), (low, LOW)):
        meta, raw = split_meta(buf)
        wire = files.IMPLICIT_LE if syntax == files.IMPLICIT_LE else syntax
        got = dx.dx_from_encoded(raw, wire, name="c-store", deadline=time.monotonic() + 30)
        np.testing.assert_array_equal(got.pixels, img)
        assert got.transfer_syntax == syntax
        if files.TRANSFER_SYNTAXES[syntax] == "native":  # without file meta, only the encoding tells
            bare = dx.read_dx(raw if syntax != files.DEFLATED_LE else buf, force=True)
            np.testing.assert_array_equal(bare.pixels, img)


# ---------------------------------------------------------------------------------------------
# The deadline hook.


def test_a_passed_deadline_stops_every_reader():
    past = time.monotonic() - 1
    png = cv2.imencode(".png", HIGH)[1].tobytes()
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, HIGH, compression="lzw")
    for source in (png, tiff.getvalue()):
        with pytest.raises(ScanDeadlineError, match="x: decoding ran past its deadline and was stopped"):
            read_scan(source, name="x", deadline=past)
    for syntax in files.TRANSFER_SYNTAXES:
        high, low = dx.write_dx_pair(HIGH, LOW, transfer_syntax=syntax)
        with pytest.raises(ScanDeadlineError, match="high: decoding ran past its deadline"):
            dx.read_dx_pair(high, low, deadline=past)
        with pytest.raises(ScanDeadlineError):
            dx.dx_from_encoded(split_meta(high)[1], syntax, deadline=past)
    assert issubclass(ScanDeadlineError, ScanError)


def test_deadline_is_checked_between_inflation_steps():
    bomb, raw = deflated_bomb(90 << 20)  # under the cap: inflating it all would take many steps
    t0 = time.monotonic()
    with pytest.raises(ScanDeadlineError):
        dx.dx_from_encoded(raw, files.DEFLATED_LE, deadline=t0 + 0.005)
    assert time.monotonic() - t0 < 0.25  # inflating and parsing it all takes about 1 s here
    # Without a deadline it inflates (90 MiB is within the cap) and the pixels are read.
    np.testing.assert_array_equal(dx.read_dx(bomb).pixels, SMALL)
