"""Canonical object drawing: thickness maps per material on a small grid, then pose (mirror, rotate)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from xscreen.training.synth.physics import COEF

_SHIFT = 4  # cv2 fixed-point sub-pixel bits for anti-aliased polygons
_F = np.float32


class Sprite:
    """One object drawn lying along x (length) and centred on y = 0 (width), in cm.

    ``depth`` [h, w, 2] accumulates optical depth (low, high energy) = sum over materials of
    linear attenuation x path length. Geometry helpers return path-length maps in cm.
    """

    def __init__(self, length_cm: float, width_cm: float, px: float, margin_cm: float = 0.0):
        self.px = float(px)
        pad = 2 + int(math.ceil(margin_cm / px))
        self.x0 = pad * px  # cm: x = 0 sits at column `pad`
        self.w = int(math.ceil(length_cm / px)) + 2 * pad
        self.h = int(math.ceil(width_cm / px)) + 2 * pad + 2
        self.x = ((np.arange(self.w) + 0.5) * px - self.x0).astype(_F)[None, :]  # [1, w] cm along
        self.y = ((np.arange(self.h) + 0.5) * px - self.h * px / 2).astype(_F)[:, None]  # [h, 1] cm across
        self._paths: dict[str, np.ndarray] = {}

    # -- accumulation ------------------------------------------------------------------------
    def add(self, material: str, path_cm) -> None:
        """Add a path-length map (cm, broadcastable to [h, w]) of one material."""
        acc = self._paths.get(material)
        if acc is None:
            acc = self._paths[material] = np.zeros((self.h, self.w), _F)
        acc += np.asarray(path_cm, dtype=_F)

    @property
    def depth(self) -> np.ndarray:
        """Optical depth [h, w, 2] (low, high): sum over materials of path x linear attenuation."""
        return depth_of(self._paths, (self.h, self.w))

    # -- geometry (all return cm path lengths or 0..1 coverage, shape [h, w]) ----------------
    def chord(self, radius, y0: float = 0.0) -> np.ndarray:
        """Path through a cylinder (axis along x) of ``radius`` (scalar or [1, w]) seen from above."""
        r = np.asarray(radius, dtype=_F)
        return 2.0 * np.sqrt(np.maximum(r * r - (self.y - y0) ** 2, 0.0))

    def shell(self, radius, wall: float, y0: float = 0.0) -> np.ndarray:
        """Path through a tube wall: outer chord minus inner chord."""
        r = np.asarray(radius, dtype=_F)
        return self.chord(r, y0) - self.chord(np.maximum(r - wall, 0.0), y0)

    def span(self, x_from: float, x_to: float) -> np.ndarray:
        """Coverage 0..1 of columns between x_from and x_to (anti-aliased), [1, w]."""
        lo = np.clip((self.x + self.px / 2 - x_from) / self.px, 0, 1)
        hi = np.clip((x_to - (self.x - self.px / 2)) / self.px, 0, 1)
        return (lo * hi).astype(_F)

    def profile(self, xs, rs) -> np.ndarray:
        """Piecewise-linear radius along x, zero outside [xs[0], xs[-1]], [1, w]."""
        r = np.interp(self.x[0], xs, rs).astype(_F)[None, :]
        return r * self.span(xs[0], xs[-1])

    def _to_px(self, pts_cm) -> np.ndarray:
        p = np.asarray(pts_cm, dtype=np.float64)
        col = (p[:, 0] + self.x0) / self.px - 0.5
        row = p[:, 1] / self.px + self.h / 2 - 0.5
        return np.round(np.stack([col, row], 1) * (1 << _SHIFT)).astype(np.int32)

    def poly(self, pts_cm) -> np.ndarray:
        """Anti-aliased coverage 0..1 of a polygon given as (x, y) cm points."""
        canvas = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(canvas, [self._to_px(pts_cm)], 255, cv2.LINE_AA, _SHIFT)
        return canvas.astype(_F) / 255.0

    def ring(self, centre, axes, width_cm: float, angle_deg: float = 0.0) -> np.ndarray:
        """Coverage 0..1 of an elliptical ring (band of ``width_cm``)."""
        canvas = np.zeros((self.h, self.w), np.uint8)
        c = self._to_px([centre])[0]
        ax = (int(axes[0] / self.px * (1 << _SHIFT)), int(axes[1] / self.px * (1 << _SHIFT)))
        th = max(1, int(round(width_cm / self.px)))
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), ax, angle_deg, 0, 360, 255, th, cv2.LINE_AA, _SHIFT)
        return canvas.astype(_F) / 255.0

    def disc(self, centre, radius_cm: float) -> np.ndarray:
        """Path length through a ball-like rivet/screw head: a sphere-cap profile, cm."""
        cx, cy = centre
        d2 = (self.x - cx) ** 2 + (self.y - cy) ** 2
        return 2.0 * np.sqrt(np.maximum(radius_cm**2 - d2, 0.0)).astype(_F)

    def bar(self, pts_cm, width_cm: float) -> np.ndarray:
        """Coverage 0..1 of a polyline drawn with a given width (cables, rods, tines)."""
        canvas = np.zeros((self.h, self.w), np.uint8)
        th = max(1, int(round(width_cm / self.px)))
        cv2.polylines(canvas, [self._to_px(pts_cm)], False, 255, th, cv2.LINE_AA, _SHIFT)
        return canvas.astype(_F) / 255.0


def depth_of(paths: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Per-material path maps (cm, clipped at 0) -> optical depth [h, w, 2] (low, high)."""
    lo = np.zeros(shape, _F)
    hi = np.zeros(shape, _F)
    for material, path in paths.items():
        t = np.maximum(np.broadcast_to(path, shape), 0.0, dtype=_F)
        c_lo, c_hi = COEF[material]
        cv2.scaleAdd(t, float(c_lo), lo, dst=lo)  # lo += c_lo * t (SIMD)
        cv2.scaleAdd(t, float(c_hi), hi, dst=hi)
    return cv2.merge([lo, hi])


def trim(depth: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Crop a [h, w, 2] depth map to its non-empty extent plus a 1-pixel border."""
    nz = depth[..., 0] > eps
    rows, cols = np.flatnonzero(nz.any(1)), np.flatnonzero(nz.any(0))
    if rows.size == 0:
        return depth[:1, :1]
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, depth.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, depth.shape[1])
    return depth[r0:r1, c0:c1]


def pose(depth: np.ndarray, rng: np.random.Generator, angle_deg: float | None = None) -> np.ndarray:
    """Random mirror and in-plane rotation of a [h, w, 2] depth map, canvas grown to fit."""
    if rng.random() < 0.5:
        depth = depth[::-1]
    angle = float(rng.uniform(0, 360)) if angle_deg is None else angle_deg
    h, w = depth.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(math.ceil(h * sin + w * cos)) + 2, int(math.ceil(h * cos + w * sin)) + 2
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    out = cv2.warpAffine(np.ascontiguousarray(depth), m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
    return trim(np.maximum(out, 0.0))
