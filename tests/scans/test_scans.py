"""Raw scan readers, validation errors and the docs/method.md §1 conversion (values, file round trip)."""

from __future__ import annotations

import io
import math
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
import torch

from xscreen.errors import XscreenError
from xscreen.scans import (
    ScanError,
    ScanSizeMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    check_pair,
    convert_scan,
    decode_raw_uint16,
    read_converted,
    read_scan,
    write_converted,
    write_raw_png,
)


def _png_bytes(img: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", img)
    assert ok
    return enc.tobytes()


def _npy_bytes(arr: np.ndarray) -> bytes:
    fp = io.BytesIO()
    np.save(fp, arr, allow_pickle=False)
    return fp.getvalue()


def _tiff_bytes(arr: np.ndarray, **kw) -> bytes:
    fp = io.BytesIO()
    tifffile.imwrite(fp, arr, **kw)
    return fp.getvalue()


RNG = np.random.default_rng(0)
SCAN = RNG.integers(0, 65536, size=(7, 11), dtype=np.uint16)


# --- conversion ------------------------------------------------------------------------------


def test_conversion_values_on_known_pixels():
    high = np.array([[0, 65535], [25600, 1000]], dtype=np.uint16)
    low = np.array([[0, 65535], [12800, 0]], dtype=np.uint16)
    out = convert_scan(high, low)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    # channel 1 = high/256, channel 2 = low/256
    np.testing.assert_allclose(out[..., 0], [[0.0, 65535 / 256], [100.0, 1000 / 256]], rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], [[0.0, 65535 / 256], [50.0, 0.0]], rtol=1e-6)
    # channel 3 = 510*sigmoid(high/low) - 255, low clamped to 1
    sig = lambda r: 1.0 / (1.0 + math.exp(-r))  # noqa: E731
    expected = [[510 * sig(0.0) - 255, 510 * sig(1.0) - 255], [510 * sig(2.0) - 255, 510 * sig(1000.0) - 255]]
    np.testing.assert_allclose(out[..., 2], expected, atol=1e-4)
    assert out[0, 0, 2] == pytest.approx(0.0, abs=1e-5)
    assert out[0, 1, 2] == pytest.approx(117.8399, abs=1e-3)  # 510*sigmoid(1)-255
    assert out[1, 1, 2] == pytest.approx(255.0)  # low == 0: clamped, finite
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() < 256.0  # high/256 tops out at 65535/256


def test_conversion_equals_the_textbook_formula_and_leaves_its_inputs_alone():
    # convert_scan works in place for speed; it must still be Eq. 1 computed in float32, bit for bit
    rng = np.random.default_rng(5)
    for dtype in (np.uint16, np.float32, np.float64):
        high = rng.integers(0, 65536, size=(33, 47)).astype(dtype)
        low = rng.integers(0, 65536, size=(33, 47)).astype(dtype)
        low[0, :5] = 0
        high_before, low_before = high.copy(), low.copy()
        h, lo = high.astype(np.float32), low.astype(np.float32)
        expected = np.stack(
            [h / 256.0, lo / 256.0, 510.0 / (1.0 + np.exp(-(h / np.maximum(lo, 1.0)))) - 255.0], axis=-1
        )
        out = convert_scan(high, low)
        assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(high, high_before)
        np.testing.assert_array_equal(low, low_before)


def test_conversion_rejects_mismatched_and_tiny_pairs():
    with pytest.raises(ScanError, match="size mismatch: high is 11x7, low is 7x11"):
        convert_scan(SCAN, SCAN.T.copy())
    with pytest.raises(ScanError, match="at least 2x2"):
        check_pair(np.zeros((1, 5), np.uint16), np.zeros((1, 5), np.uint16))
    with pytest.raises(ScanError, match="empty"):
        check_pair(np.zeros((0, 5), np.uint16), np.zeros((0, 5), np.uint16))
    with pytest.raises(ScanError, match="single-channel"):
        check_pair(np.zeros((4, 4, 3), np.uint16), np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ScanError, match="within 0..65535"):
        convert_scan(np.full((3, 3), -1.0), np.ones((3, 3)))


def test_scan_error_is_a_user_error():
    assert issubclass(ScanError, XscreenError)


def test_scan_error_kinds_the_service_maps_to_http_statuses():
    # service.errors.scan_error_to_api maps these classes to 413 / 415 / 400 (scan_size_mismatch); every
    # other ScanError is a plain 400
    img = np.zeros((40, 50), np.uint16)
    with pytest.raises(ScanTooLargeError, match="more than the limit of 1000 pixels"):
        read_scan(_png_bytes(img), name="high", max_pixels=1000)
    with pytest.raises(ScanTooLargeError):
        decode_raw_uint16(img.tobytes(), 50, 40, max_pixels=1000)
    for junk in (b"\xff\xd8\xff\xe0JFIF", b"GIF89a......"):
        with pytest.raises(UnsupportedScanFormatError):
            read_scan(junk, name="low")
    with pytest.raises(ScanSizeMismatchError, match="size mismatch"):
        check_pair(img, img.T.copy())
    with pytest.raises(ScanError) as info:
        read_scan(_png_bytes(img.astype(np.uint8)), name="high")
    assert type(info.value) is ScanError  # 8-bit: a plain invalid scan


def test_converted_file_round_trip_matches_direct_conversion(tmp_path):
    high = RNG.integers(2000, 65535, size=(40, 60), dtype=np.uint16)
    low = RNG.integers(0, 65535, size=(40, 60), dtype=np.uint16)
    write_raw_png(tmp_path / "s_high.png", high)
    write_raw_png(tmp_path / "s_low.png", low)
    direct = torch.from_numpy(convert_scan(high, low)).permute(2, 0, 1)
    h2, l2 = read_scan(tmp_path / "s_high.png"), read_scan(tmp_path / "s_low.png")
    assert np.array_equal(h2, high) and np.array_equal(l2, low)  # raw PNG is lossless
    write_converted(tmp_path / "s.png", convert_scan(h2, l2))
    loaded = torch.from_numpy(read_converted(tmp_path / "s.png")).permute(2, 0, 1)
    # 8-bit quantisation rounds to nearest: |loaded - direct| <= 0.5 wherever direct <= 255.5;
    # high/256 can reach 65535/256 = 255.996, stored as 255 (error < 1) -- exactly that, no more.
    assert loaded.shape == direct.shape == (3, 40, 60)
    err = (loaded - direct).abs()
    in_range = direct <= 255.5
    assert err[in_range].max().item() <= 0.5 + 1e-4
    assert (loaded[~in_range] == 255).all() and (err[~in_range] < 1.0).all()
    # The on-disk order is BGR (viewer shows channel 1 as red): cv2's raw read sees channel 1 last.
    raw_bgr = cv2.imread(str(tmp_path / "s.png"), cv2.IMREAD_COLOR)
    assert np.array_equal(raw_bgr[..., 2], np.clip(np.rint(direct[0].numpy()), 0, 255).astype(np.uint8))
    assert np.array_equal(raw_bgr[..., 0], np.clip(np.rint(direct[2].numpy()), 0, 255).astype(np.uint8))


# --- readers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["png", "tiff", "npy"])
def test_readers_from_bytes_and_path(tmp_path, kind):
    data = {"png": _png_bytes, "tiff": _tiff_bytes, "npy": _npy_bytes}[kind](SCAN)
    path = tmp_path / f"scan.bin.{kind}"
    path.write_bytes(data)
    for src in (data, path, str(path)):
        out = read_scan(src)
        assert out.dtype == np.uint16 and np.array_equal(out, SCAN)


def test_big_endian_npy_is_normalised():
    out = read_scan(_npy_bytes(SCAN.astype(">u2")))
    assert out.dtype == np.uint16 and out.dtype.byteorder in "=|<" and np.array_equal(out, SCAN)


def test_compressed_tiff_reads():
    assert np.array_equal(read_scan(_tiff_bytes(SCAN, compression="zlib")), SCAN)


@pytest.mark.parametrize(
    "data, message",
    [
        (_png_bytes(SCAN.astype(np.uint8)), "PNG is 8-bit"),
        (_png_bytes(np.zeros((5, 5, 3), np.uint16)), "PNG is RGB colour"),
        (_png_bytes(np.zeros((1, 9), np.uint16)), "9x1 pixels; a scan needs at least 2x2"),
        (_png_bytes(SCAN)[:-20], "truncated PNG"),
        (_png_bytes(SCAN)[:30], "truncated or corrupt PNG"),
        (_tiff_bytes(SCAN.astype(np.uint8)), "TIFF pixels are uint8"),
        (_tiff_bytes(np.zeros((5, 5, 3), np.uint16), photometric="rgb"), "multi-sample or stacked TIFF"),
        (_tiff_bytes(SCAN)[:40], "truncated or corrupt TIFF"),
        (_npy_bytes(SCAN.astype(np.float32)), "dtype float32; a raw scan must be uint16"),
        (_npy_bytes(SCAN.astype(np.int16)), "dtype int16"),
        (_npy_bytes(np.zeros((3, 4, 4), np.uint16)), "must be 2-D"),
        (_npy_bytes(SCAN)[:-10], "truncated .npy"),
        (b"\x93NUMPY\x01\x00garbage", "corrupt .npy header"),
        (b"", "empty file"),
        (b"GIF89a....", "unknown file format"),
        (b"\xff\xd8\xff\xe0JFIF", "JPEG is 8-bit"),
    ],
)
def test_bad_inputs_are_rejected_with_specific_messages(data, message):
    with pytest.raises(ScanError, match=message.replace(".", r"\.")):
        read_scan(data, name="x")


def test_corrupt_png_data_is_rejected():
    data = bytearray(_png_bytes(RNG.integers(0, 65535, size=(64, 64), dtype=np.uint16)))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 80] = b"\x00" * 40  # damage the compressed stream (CRC now wrong too)
    with pytest.raises(ScanError, match="corrupt PNG"):
        read_scan(bytes(data))


def test_pixel_limit_checked_from_header_before_decoding():
    # A hand-made PNG whose header claims 100000 x 100000 pixels but holds no real data:
    # the size check must fire from the header alone.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 16, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    with pytest.raises(ScanError, match="more than the limit of 50000000 pixels"):
        read_scan(bomb)
    with pytest.raises(ScanError, match="11x7 = 77 pixels, more than the limit of 50"):
        read_scan(_tiff_bytes(SCAN), max_pixels=50)
    with pytest.raises(ScanError, match="more than the limit of 76"):
        read_scan(_npy_bytes(SCAN), max_pixels=76)
    assert read_scan(_npy_bytes(SCAN), max_pixels=77).shape == (7, 11)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ScanError, match="no such file"):
        read_scan(tmp_path / "nope.png")
    with pytest.raises(ScanError, match="is a directory"):
        read_scan(tmp_path)


def test_decode_raw_uint16():
    buf = SCAN.astype("<u2").tobytes()
    assert np.array_equal(decode_raw_uint16(buf, 11, 7), SCAN)
    with pytest.raises(ScanError, match="155 bytes; 11x7 uint16 pixels need exactly 154"):
        decode_raw_uint16(buf + b"\x00", 11, 7)
    with pytest.raises(ScanError, match="at least 2x2"):
        decode_raw_uint16(b"\x00\x00", 1, 1)
    with pytest.raises(ScanError, match="more than the limit"):
        decode_raw_uint16(buf, 11, 7, max_pixels=10)


def test_conversion_into_row_blocks_of_one_output_equals_the_whole():
    # the detection pipeline converts the two halves of a scan in two threads into one array
    from xscreen.scans import convert_parallel

    rng = np.random.default_rng(8)
    high = rng.integers(0, 65536, size=(301, 64), dtype=np.uint16)
    low = rng.integers(0, 65536, size=(301, 64), dtype=np.uint16)
    whole = convert_scan(high, low)
    out = np.full((301, 64, 3), np.nan, dtype=np.float32)
    assert convert_scan(high[:150], low[:150], out[:150]) is not None
    convert_scan(high[150:], low[150:], out[150:])
    np.testing.assert_array_equal(out, whole)
    np.testing.assert_array_equal(convert_parallel(high, low), whole)
    np.testing.assert_array_equal(convert_parallel(high[:5], low[:5]), whole[:5])  # small: one piece
    with pytest.raises(ScanError, match="size mismatch"):
        convert_parallel(high, low[:300])
    with pytest.raises(ScanError, match=r"out must be float32 \(301, 64, 3\)"):
        convert_scan(high, low, np.empty((301, 64, 3), np.float64))
