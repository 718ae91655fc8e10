"""The scanner-style pseudo-colour picture of a raw dual-energy scan, with boxes and labels drawn on it.

Orange = organic, green = inorganic / mixed, blue = metal, as on airport scanners. Used by
``xscreen render``, ``xscreen detect --render`` and the service's ``POST /render``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from xscreen.scans.convert import check_pair
from xscreen.scans.formats import ScanError

# Material colour by the ratio of low- to high-energy attenuation, ln(T_low) / ln(T_high), which
# a dual-energy scanner reads as effective atomic number: ~1.35 organics, ~2 aluminium and ~2.3 glass
# (both green), ~6 steel (see training.synth.physics). Anchor hues (OpenCV HSV, 0..180): orange, green, blue.
_RATIO_ANCHORS = np.array([1.0, 1.5, 1.9, 2.5, 3.2], np.float32)
_HUE_ANCHORS = np.array([15.0, 15.0, 60.0, 60.0, 108.0], np.float32)
_BOX_COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def _air_level(img: np.ndarray) -> float:
    """Unattenuated beam level: a high percentile of the scan (air surrounds any bag)."""
    return max(float(np.percentile(img, 99.5)), 1.0)


# pseudo_colour works in blocks of this many rows (plus a halo of _HALO_ROWS above and below for the
# Gaussian blur, whose sigma-1 float kernel reaches 4 rows), so its float temporaries (~40 bytes a pixel)
# cover one block, not the whole scan: a 5000 x 5000 picture needs its 75 MB output and ~10 MB besides.
_BLOCK_ROWS = 256
_HALO_ROWS = 8


def _colour_rows(high: np.ndarray, low: np.ndarray, air: tuple[float, float]) -> np.ndarray:
    """HSV (uint8 [h, w, 3]) of a block of rows; every step is per pixel except the blur."""
    t_hi = np.clip(high.astype(np.float32) / air[0], 1e-4, 1.0)
    t_lo = np.clip(low.astype(np.float32) / air[1], 1e-4, 1.0)
    a_hi = cv2.GaussianBlur(-np.log(t_hi), (0, 0), 1.0)
    a_lo = cv2.GaussianBlur(-np.log(t_lo), (0, 0), 1.0)
    ratio = a_lo / np.maximum(a_hi, 0.02)
    hue = np.interp(ratio, _RATIO_ANCHORS, _HUE_ANCHORS).astype(np.float32)
    sat = np.clip(a_hi * 3.5, 0.0, 1.0) * 235.0
    val = np.clip(np.exp(-0.7 * a_hi) * 1.05, 0.0, 1.0) * 255.0
    return np.stack([hue, sat, val], axis=-1).astype(np.uint8)


def pseudo_colour(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Raw pair (uint16 [H, W]) -> uint8 RGB [H, W, 3] in the usual scanner colours.

    Hue from the low/high attenuation ratio (orange organic, green inorganic/mixed, blue metal),
    brightness from the high-energy transmission (dense objects dark), saturation rising with
    attenuation so that air stays white. Computed in row blocks with a halo wider than the blur's
    kernel, so the picture is the same as the whole scan's in one piece, with bounded temporaries.
    """
    check_pair(high, low)
    air = (_air_level(high), _air_level(low))
    rows = high.shape[0]
    out = np.empty(high.shape + (3,), np.uint8)
    for start in range(0, rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, rows)
        lo, hi = max(start - _HALO_ROWS, 0), min(stop + _HALO_ROWS, rows)
        hsv = _colour_rows(high[lo:hi], low[lo:hi], air)[start - lo : stop - lo]
        cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=out[start:stop])
    return out


def raw_from_converted(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate raw pair of a converted [H, W, 3] image (channels 1, 2 = high/256, low/256).

    For datasets that ship only converted images (CLCXray); exact up to the 8-bit quantisation.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ScanError(f"converted image must be [H, W, 3], got shape {image.shape}")
    high = np.clip(np.rint(image[..., 0].astype(np.float64) * 256.0), 0, 65535).astype(np.uint16)
    low = np.clip(np.rint(image[..., 1].astype(np.float64) * 256.0), 0, 65535).astype(np.uint16)
    return high, low


def draw_detections(rgb, boxes, labels, scores, class_names) -> np.ndarray:
    """Boxes with 'name score' labels on a copy of an RGB uint8 image.

    ``boxes`` [K, 4] x1y1x2y2 pixels, ``labels`` [K] 0-based into ``class_names``, ``scores``
    [K] or None (ground truth: label text only).
    """
    return _draw_in_place(
        np.ascontiguousarray(np.array(rgb, dtype=np.uint8, copy=True)), boxes, labels, scores, class_names
    )


def _draw_in_place(img: np.ndarray, boxes, labels, scores, class_names) -> np.ndarray:
    """``draw_detections`` on ``img`` itself (a contiguous uint8 [H, W, 3] array); returns it."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 400))
    font = max(0.4, min(h, w) / 1200)
    placed: list[tuple[int, int, int, int]] = []  # label rectangles already drawn
    for k, (box, lab) in enumerate(zip(boxes, labels, strict=True)):
        colour = _BOX_COLOURS[int(lab) % len(_BOX_COLOURS)]
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, thick, cv2.LINE_AA)
        name = class_names[int(lab)] if 0 <= int(lab) < len(class_names) else str(int(lab))
        text = name if scores is None else f"{name} {scores[k]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, h - 1)
        lx = max(0, min(x1, w - tw - 3))  # keep the label inside the picture
        for _ in range(len(placed)):  # step down past labels this one would cover
            rect = (lx, ty - th - base + 1, lx + tw + 2, ty + 1)
            if not any(
                a[0] < rect[2] and rect[0] < a[2] and a[1] < rect[3] and rect[1] < a[3] for a in placed
            ):
                break
            ty = min(ty + th + base + 2, h - 1)
        placed.append((lx, ty - th - base + 1, lx + tw + 2, ty + 1))
        cv2.rectangle(img, (lx, ty - th - base + 1), (lx + tw + 2, ty + 1), colour, -1)
        org = (lx + 1, ty - base + 1)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def render_png(
    high: np.ndarray,
    low: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None,
    class_names: Sequence[str],
) -> bytes:
    """``pseudo_colour`` of the pair with ``draw_detections`` on it, encoded as a PNG file's bytes."""
    rgb = pseudo_colour(high, low)  # our own array: drawn on and turned to BGR in place
    if len(boxes):
        _draw_in_place(rgb, boxes, labels, scores, class_names)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb))
    if not ok:
        raise ScanError("cannot encode the rendered picture as PNG")
    return png.tobytes()
