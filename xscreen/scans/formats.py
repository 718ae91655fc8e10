"""Scan files: readers and writers of raw energy images (16-bit PNG / TIFF / .npy / raw) and converted images.

On-disk channel order of converted images (fixed here, docs/method.md §1): a converted image is
quantised to 8 bits and written with OpenCV AFTER an RGB->BGR swap, so that any normal image
viewer shows channel 1 (high/256) as red, channel 2 (low/256) as green and channel 3
(510*sigmoid(high/low)-255) as blue. ``read_converted`` undoes the swap (BGR->RGB) and returns
the channels in the contract order (high, low, ratio).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np

from xscreen.scans.bounded import check_deadline, decode_png_bounded
from xscreen.scans.errors import (  # noqa: F401  (re-exported: the scan layer's public errors)
    ScanDeadlineError,
    ScanError,
    ScanHeaderMismatchError,
    ScanSizeMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    _label,
)

# Largest scan accepted by default (pixels per energy image). Real baggage scanners deliver
# a few megapixels per view; 50 MP leaves ample room while refusing decompression bombs.
DEFAULT_MAX_PIXELS = 50_000_000
# Smallest accepted image side (method contract: ">= 2x2").
MIN_SIDE = 2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
NPY_MAGIC = b"\x93NUMPY"
DICM_OFFSET, DICM_MAGIC = 128, b"DICM"  # DICOM Part 10 file: 128-byte preamble, then "DICM"
_PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB colour", 3: "palette colour", 4: "grey+alpha", 6: "RGBA colour"}


def check_size(height: int, width: int, max_pixels: int | None, name: str | None) -> None:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if height <= 0 or width <= 0:
        raise ScanError(f"{_label(name)}empty image ({width}x{height} pixels)")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ScanError(
            f"{_label(name)}image is {width}x{height} pixels; a scan needs at least {MIN_SIDE}x{MIN_SIDE}"
        )
    if height * width > limit:
        raise ScanTooLargeError(
            f"{_label(name)}image is {width}x{height} = {height * width} pixels, "
            f"more than the limit of {limit} pixels"
        )


def _read_png(buf: bytes, max_pixels: int | None, name: str | None, deadline: float | None) -> np.ndarray:
    # Check the IHDR header before decoding anything (decompression bombs, wrong depth).
    if len(buf) < 33 or buf[12:16] != b"IHDR":
        raise ScanError(f"{_label(name)}truncated or corrupt PNG (no IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", buf[16:26])
    if colour != 0:
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        raise ScanError(
            f"{_label(name)}PNG is {kind}; a raw scan must be a single-channel 16-bit greyscale image"
        )
    if depth != 16:
        raise ScanError(f"{_label(name)}PNG is {depth}-bit; a raw scan must be 16-bit greyscale")
    check_size(height, width, max_pixels, name)

    return decode_png_bounded(buf, width, height, deadline, name)


# TIFF compressions decoded (tifffile codes): none, LZW, Deflate (Adobe and old), PackBits. tifffile
# hands each strip or tile to imagecodecs with an output buffer of the declared segment size, so a
# segment that would inflate further fails instead of growing.
TIFF_COMPRESSIONS = {1: "none", 5: "LZW", 8: "Deflate", 32946: "Deflate", 32773: "PackBits"}
# Largest TIFF tile accepted, in pixels, when the image itself is smaller (a tile is decoded whole).
TIFF_MAX_TILE_PIXELS = 512 * 512
# File flags that make tifffile parse every IFD of the file when it is opened (LSM, NDPI, ScanImage).
_TIFF_FLAGS_OFF = {"is_lsm": False, "is_ndpi": False, "is_scanimage": False}


def _check_tiff_page(page, name: str | None, max_pixels: int | None) -> tuple[int, int]:
    """A TIFF's first page is one 2-D uint16 image within the limits, in a compression decoded here."""
    shape, dtype = tuple(page.shape), np.dtype(page.dtype)
    if len(shape) != 2:
        raise ScanError(
            f"{_label(name)}TIFF image has shape {shape}; a raw scan must be "
            "a single 2-D 16-bit greyscale image (colour, multi-sample or stacked TIFF given)"
        )
    if dtype != np.uint16:
        raise ScanError(f"{_label(name)}TIFF pixels are {dtype}; a raw scan must be 16-bit unsigned (uint16)")
    check_size(shape[0], shape[1], max_pixels, name)
    compression = int(page.compression)
    if compression not in TIFF_COMPRESSIONS:
        raise UnsupportedScanFormatError(
            f"{_label(name)}TIFF compression {compression} is not decoded here; "
            "accepted: none, LZW, Deflate, PackBits"
        )
    if page.is_tiled:
        tile = int(page.tilewidth) * int(page.tilelength) * max(1, int(page.tiledepth))
        if tile > max(shape[0] * shape[1], TIFF_MAX_TILE_PIXELS):
            raise ScanHeaderMismatchError(
                f"{_label(name)}TIFF tiles are {page.tilewidth}x{page.tilelength} pixels, larger than "
                f"the {shape[1]}x{shape[0]} image; refused"
            )
    return shape[0], shape[1]


def _read_tiff(buf: bytes, max_pixels: int | None, name: str | None, deadline: float | None) -> np.ndarray:
    # Only the first IFD is parsed (``bool(tif.pages)`` does not walk the IFD chain); strips and tiles
    # decode through tifffile with imagecodecs into buffers of their declared size.
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(buf), **_TIFF_FLAGS_OFF) as tif:
            if not tif.pages:
                raise ScanError(f"{_label(name)}TIFF holds no image")
            page = tif.pages.first
            shape = _check_tiff_page(page, name, max_pixels)
            check_deadline(deadline, name)
            img = page.asarray()
    except ScanError:
        raise
    except Exception as exc:  # tifffile raises many types on damaged files
        if "imagecodecs" in str(exc):  # LZW and others decode through imagecodecs (a dependency)
            raise UnsupportedScanFormatError(
                f"{_label(name)}TIFF compression needs the imagecodecs package ({exc})"
            ) from None
        raise ScanError(f"{_label(name)}truncated or corrupt TIFF ({type(exc).__name__}: {exc})") from None
    check_deadline(deadline, name)
    if img.shape != shape:
        raise ScanError(f"{_label(name)}corrupt TIFF (decoded shape {img.shape}, header says {shape})")
    return np.ascontiguousarray(img, dtype=np.uint16)


def _read_npy(buf: bytes, max_pixels: int | None, name: str | None, deadline: float | None) -> np.ndarray:
    # The header is checked (dtype, 2-D shape, pixel limit, length) before ``np.load`` reads the array,
    # which then copies exactly the declared bytes; numpy refuses headers over 10 000 bytes.
    fp = io.BytesIO(buf)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except Exception as exc:
        raise ScanError(f"{_label(name)}corrupt .npy header ({exc})") from None
    if dtype.hasobject:
        raise ScanError(f"{_label(name)}.npy holds Python objects; only uint16 arrays are accepted")
    if dtype.kind != "u" or dtype.itemsize != 2:
        raise ScanError(f"{_label(name)}.npy array has dtype {dtype}; a raw scan must be uint16")
    if len(shape) != 2:
        raise ScanError(f"{_label(name)}.npy array has shape {tuple(shape)}; a raw scan must be 2-D [H, W]")
    check_size(shape[0], shape[1], max_pixels, name)
    expected = fp.tell() + shape[0] * shape[1] * 2
    if len(buf) < expected:
        raise ScanError(f"{_label(name)}truncated .npy ({len(buf)} bytes, {expected} needed)")
    fp.seek(0)
    try:
        arr = np.load(fp, allow_pickle=False)
    except Exception as exc:
        raise ScanError(f"{_label(name)}corrupt .npy ({exc})") from None
    return np.ascontiguousarray(arr, dtype=np.uint16)  # also normalises big-endian '>u2'


def sniff_format(buf: bytes) -> str | None:
    """'png', 'tiff', 'npy' or 'dicom' from a file's magic bytes (not its name); None for anything else."""
    if buf.startswith(PNG_MAGIC):
        return "png"
    if buf[:4] in TIFF_MAGICS:
        return "tiff"
    if buf.startswith(NPY_MAGIC):
        return "npy"
    if buf[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC:
        return "dicom"
    return None


def read_scan(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    deadline: float | None = None,
) -> np.ndarray:
    """Read one raw energy image (16-bit PNG, 16-bit TIFF or .npy) into a uint16 [H, W] array.

    ``source`` is a path or the file's bytes; the format is sniffed from the magic bytes, not
    the name. ``name`` labels error messages (defaults to the path). ``max_pixels`` (default
    ``DEFAULT_MAX_PIXELS``) is checked against the header before any pixel is decoded, and no decoder
    produces more than the header declares (xscreen.scans.bounded). ``deadline``, a ``time.monotonic()``
    value, is checked between decoding steps (``ScanDeadlineError`` past it).
    Raises ``ScanError`` with a specific message for every unusable input.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        try:
            buf = path.read_bytes()
        except FileNotFoundError:
            raise ScanError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise ScanError(f"{name}: is a directory, not a scan file") from None
        except OSError as exc:
            raise ScanError(f"{name}: cannot read ({exc.strerror or exc})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        buf = bytes(source)
    else:
        raise ScanError(f"{_label(name)}expected a path or bytes, got {type(source).__name__}")
    if not buf:
        raise ScanError(f"{_label(name)}empty file (0 bytes)")
    readers = {"png": _read_png, "tiff": _read_tiff, "npy": _read_npy}
    kind = sniff_format(buf)
    if kind == "dicom":
        raise UnsupportedScanFormatError(
            f"{_label(name)}a DICOS DX image is read with its other energy "
            "(xscreen.scans.dicos.dx.read_dx_pair)"
        )
    if kind is not None:
        return readers[kind](buf, max_pixels, name, deadline)
    if buf[:3] == b"\xff\xd8\xff":
        raise UnsupportedScanFormatError(
            f"{_label(name)}JPEG is 8-bit and lossy; a raw scan must be 16-bit PNG, 16-bit TIFF or .npy"
        )
    raise UnsupportedScanFormatError(
        f"{_label(name)}unknown file format (first bytes {buf[:8]!r}); "
        "expected a 16-bit PNG, a 16-bit TIFF or a .npy array"
    )


def decode_raw_uint16(buf: bytes, width: int, height: int, *, max_pixels: int | None = None) -> np.ndarray:
    """Headerless little-endian uint16 pixels (row-major, ``width`` x ``height``) -> [H, W] array."""
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError):
        raise ScanError(f"width and height must be integers, got {width!r} x {height!r}") from None
    check_size(height, width, max_pixels, None)
    expected = width * height * 2
    if len(buf) != expected:
        raise ScanError(
            f"raw buffer has {len(buf)} bytes; {width}x{height} uint16 pixels need exactly {expected}"
        )
    return np.frombuffer(buf, dtype="<u2").reshape(height, width).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Files: 16-bit raw energy images and 8-bit converted images (channel order documented above).


def write_raw_png(path: str | Path, img: np.ndarray) -> None:
    """Write one energy image as a 16-bit greyscale PNG."""
    if img.dtype != np.uint16 or img.ndim != 2:
        raise ScanError(f"raw image must be uint16 [H, W], got {img.dtype} {img.shape}")
    if not cv2.imwrite(str(path), img):
        raise ScanError(f"{path}: cannot write PNG")


def quantise_converted(image: np.ndarray) -> np.ndarray:
    """Float 0..255 converted image -> uint8, rounding to nearest (error <= 0.5 per value)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_converted(path: str | Path, image: np.ndarray) -> None:
    """Write a converted [H, W, 3] image (contract order high, low, ratio) as an 8-bit PNG.

    The RGB->BGR swap makes OpenCV store channel 1 in the file's red plane.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ScanError(f"converted image must be [H, W, 3], got {image.shape}")
    data = image if image.dtype == np.uint8 else quantise_converted(image)
    if not cv2.imwrite(str(path), cv2.cvtColor(data, cv2.COLOR_RGB2BGR)):
        raise ScanError(f"{path}: cannot write image")


def read_converted(path: str | Path) -> np.ndarray:
    """Read a converted image file -> float32 [H, W, 3], channels (high, low, ratio) (BGR->RGB)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        if not Path(path).exists():
            raise ScanError(f"{path}: no such image file")
        raise ScanError(f"{path}: unreadable or corrupt image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
