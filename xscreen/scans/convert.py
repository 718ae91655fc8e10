"""Scan conversion: pair checks and THE dual-energy conversion to the model's 3 channels (paper Eq. 1).

``convert_scan`` is the single definition of docs/method.md §1. Training, evaluation, the service and
the ONNX path all call it, so a model trained on converted images sees the same tensors when it is
served raw scans.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from xscreen.scans.formats import MIN_SIDE, ScanError, ScanSizeMismatchError

_CONVERT_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xscreen-convert")
SPLIT_CONVERT_ROWS = 128  # scans with at least this many rows are converted as two blocks in parallel
# convert_parallel converts each half in steps of this many rows, so its float32 temporaries are two
# [256, W] arrays (~10 MB at W = 5000) instead of two copies of the whole scan (8 bytes per pixel).
CONVERT_BLOCK_ROWS = 256


def check_pair(high: np.ndarray, low: np.ndarray) -> None:
    """Both energy images 2-D, the same size and at least 2x2; raise ``ScanError`` otherwise."""
    for label, img in (("high", high), ("low", low)):
        if not isinstance(img, np.ndarray):
            raise ScanError(f"{label}-energy image must be a numpy array, got {type(img).__name__}")
        if img.ndim != 2:
            raise ScanError(
                f"{label}-energy image has shape {img.shape}; expected a single-channel [H, W] image"
            )
        if img.size == 0:
            raise ScanError(f"{label}-energy image is empty ({img.shape[1]}x{img.shape[0]} pixels)")
        if min(img.shape) < MIN_SIDE:
            raise ScanError(
                f"{label}-energy image is {img.shape[1]}x{img.shape[0]} pixels; "
                f"a scan needs at least {MIN_SIDE}x{MIN_SIDE}"
            )
    if high.shape != low.shape:
        raise ScanSizeMismatchError(
            f"high/low size mismatch: high is {high.shape[1]}x{high.shape[0]}, "
            f"low is {low.shape[1]}x{low.shape[0]}"
        )


def _as_float(img: np.ndarray, label: str) -> np.ndarray:
    if img.dtype == np.uint16:
        return img.astype(np.float32)
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ScanError(f"{label}-energy image has dtype {img.dtype}; expected uint16")
    out = img.astype(np.float32)
    if not np.isfinite(out).all() or out.min() < 0 or out.max() > 65535:
        raise ScanError(f"{label}-energy image values must be finite and within 0..65535")
    return out


def convert_scan(high: np.ndarray, low: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Raw dual-energy pair (uint16 [H, W] each) -> converted image float32 [H, W, 3] in 0..255.

    docs/method.md §1 / paper Eq. 1: channel 1 = high/256, channel 2 = low/256,
    channel 3 = 510 * sigmoid(high / low) - 255. The denominator is clamped to >= 1 so
    ``low == 0`` gives a finite value (255 * (2 * sigmoid(high) - 1) there), never inf/NaN.
    ``out``: a float32 [H, W, 3] array to write into (e.g. a block of rows of a larger image, so
    that parts of one scan can be converted in parallel); returned.
    """
    check_pair(high, low)
    h = _as_float(high, "high")
    lo = _as_float(low, "low")
    if out is None:
        out = np.empty(h.shape + (3,), dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != h.shape + (3,):
        raise ScanError(f"convert_scan: out must be float32 {h.shape + (3,)}, got {out.dtype} {out.shape}")
    # The same float32 operations as h / 256, lo / 256 and 510 / (1 + exp(-h / max(lo, 1))) - 255,
    # written in place: this runs on every scan the service receives, before the model.
    np.multiply(h, 1.0 / 256.0, out=out[..., 0])  # 1/256 is exact: identical to h / 256
    np.multiply(lo, 1.0 / 256.0, out=out[..., 1])
    ratio = np.maximum(lo, 1.0, out=lo)  # lo is our own float32 copy
    np.divide(h, ratio, out=ratio)
    # 510*sigmoid(r) - 255; exp(-r) underflows harmlessly to 0 for large r (ratio >= 0 always).
    np.negative(ratio, out=ratio)
    np.exp(ratio, out=ratio)
    ratio += 1.0
    np.divide(510.0, ratio, out=ratio)
    np.subtract(ratio, 255.0, out=out[..., 2])
    return out


def _convert_rows(high: np.ndarray, low: np.ndarray, out: np.ndarray) -> None:
    """``convert_scan`` into ``out`` in blocks of CONVERT_BLOCK_ROWS rows (the last one at least 2 rows)."""
    rows = high.shape[0]
    starts = list(range(0, rows, CONVERT_BLOCK_ROWS))
    if len(starts) > 1 and rows - starts[-1] < MIN_SIDE:
        starts.pop()  # a 1-row remainder joins the block before it
    for start, stop in zip(starts, [*starts[1:], rows], strict=True):
        convert_scan(high[start:stop], low[start:stop], out[start:stop])


def convert_parallel(high: np.ndarray, low: np.ndarray, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """``convert_scan`` with the top and bottom halves of the scan in two threads (numpy releases the GIL),
    each half in row blocks, so the only scan-sized allocation is the float32 [H, W, 3] output.

    Bit-identical to ``convert_scan(high, low)``: the conversion is per pixel (docs/method.md §1).
    ``pool``: where the second half runs (the service passes its decode pool); default: this module's.
    """
    rows = high.shape[0]
    if rows < SPLIT_CONVERT_ROWS or high.shape != low.shape:
        return convert_scan(high, low)  # small scans, and the size-mismatch error, in one piece
    check_pair(high, low)
    out = np.empty(high.shape + (3,), dtype=np.float32)
    half = rows // 2
    bottom = (pool or _CONVERT_POOL).submit(_convert_rows, high[half:], low[half:], out[half:])
    try:
        _convert_rows(high[:half], low[:half], out[:half])
    except BaseException:
        wait([bottom])  # leave nothing running on ``out``
        raise
    bottom.result()
    return out
