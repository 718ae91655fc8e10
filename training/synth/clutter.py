"""Bag clutter: the bag (shell, frame, wheels), clothing texture, cables, electronics, keys, zips, coins."""

from __future__ import annotations

import cv2
import numpy as np

from xscreen.training.synth.sprite import Sprite, depth_of, trim

Rng = np.random.Generator
U = Rng.uniform
_F = np.float32


def _smooth_field(rng: Rng, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in 0..1 (bicubic upsampling of a coarse random grid)."""
    coarse = rng.random((cells, cells)).astype(_F)
    return np.clip(cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0, 1)


def bag(rng: Rng, h: int, w: int, px: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Bag shell + clothing + frame as an optical-depth map [h, w, 2], the frame mask, and the bag's box.

    Returns (depth, frame_mask, (x0, y0, x1, y1)). The shell and clothing are the diffuse
    background (not counted as overlap); the frame (tubes, wire, wheels) is discrete clutter.
    """
    x0, y0 = int(w * U(rng, 0.02, 0.08)), int(h * U(rng, 0.02, 0.08))
    x1, y1 = w - int(w * U(rng, 0.02, 0.08)), h - int(h * U(rng, 0.02, 0.08))
    shell = np.zeros((h, w), np.uint8)
    rad = int(min(x1 - x0, y1 - y0) * 0.08)
    cv2.rectangle(shell, (x0 + rad, y0), (x1 - rad, y1), 255, -1)
    cv2.rectangle(shell, (x0, y0 + rad), (x1, y1 - rad), 255, -1)
    for cx, cy in ((x0 + rad, y0 + rad), (x1 - rad, y0 + rad), (x0 + rad, y1 - rad), (x1 - rad, y1 - rad)):
        cv2.circle(shell, (cx, cy), rad, 255, -1, cv2.LINE_AA)
    edge = cv2.subtract(shell, cv2.erode(shell, np.ones((5, 5), np.uint8)))
    # plastic path (cm): two walls of ~2 mm + the side walls seen edge-on along the rim
    plastic = cv2.addWeighted(shell, 0.4 / 255, edge, U(rng, 3, 8) / 255, 0.0, dtype=cv2.CV_32F)

    # Clothing: folded garments as blobs of a smooth field with fold stripes, at 1/4 size.
    sh, sw = max(h // 4, 8), max(w // 4, 8)
    cloth = np.zeros((sh, sw), _F)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(_F)
    for _ in range(int(rng.integers(2, 6))):
        f = _smooth_field(rng, (sh, sw), int(rng.integers(3, 7)))
        blob = np.clip((f - U(rng, 0.45, 0.65)) * 8, 0, 1)
        theta = U(rng, 0, np.pi)
        period = U(rng, 0.5, 2.0) / (px * 4)  # fold spacing 3-13 cm (period x 2 pi)
        warp = _smooth_field(rng, (sh, sw), 4) * 8.0
        folds = 0.55 + 0.45 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) / period + warp)
        cloth += blob * folds * U(rng, 0.4, 1.6)  # water-equivalent cm of folded fabric
    small_shell = cv2.resize(shell, (sw, sh), interpolation=cv2.INTER_AREA).astype(_F) / 255.0
    cloth = cv2.resize(cloth * small_shell, (w, h), interpolation=cv2.INTER_LINEAR)

    paths = {"plastic": plastic, "organic": cloth}
    frame = np.zeros((h, w), bool)
    if rng.random() < 0.7:  # trolley handle: two aluminium tubes (r 1 cm, wall 1.5 mm) along one side
        alu = np.zeros((h, w), _F)
        vertical = rng.random() < 0.5
        length = U(rng, 0.6, 0.95)
        for k in (0.3, 0.7):
            if vertical:
                c, a0, a1 = int(x0 + (x1 - x0) * k), y0 + 5, int(y0 + (y1 - y0) * length)
            else:
                c, a0, a1 = int(y0 + (y1 - y0) * k), x0 + 5, int(x0 + (x1 - x0) * length)
            r_px = 1.0 / px
            lo, hi = max(int(c - r_px) - 1, 0), int(c + r_px) + 2
            off = (np.arange(lo, hi, dtype=_F) + 0.5 - c) * px
            prof = 2 * np.sqrt(np.maximum(1.0 - off**2, 0)) - 2 * np.sqrt(np.maximum(0.85**2 - off**2, 0))
            if vertical:
                alu[a0:a1, lo:hi] += prof[None, :]
                frame[a0:a1, lo:hi] |= prof[None, :] > 0
            else:
                alu[lo:hi, a0:a1] += prof[:, None]
                frame[lo:hi, a0:a1] |= prof[:, None] > 0
        paths["aluminium"] = alu
    steel = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:  # steel wire stiffener around the bag (3 mm wire)
        cv2.rectangle(steel, (x0 + 8, y0 + 8), (x1 - 8, y1 - 8), 255, max(1, int(0.3 / px)), cv2.LINE_AA)
    if rng.random() < 0.5:  # wheels (plastic) with steel axles at two corners
        wheels = np.zeros((h, w), np.uint8)
        rw = int(3.0 / px)
        for cx, cy in ((x0 + rw, y1 - rw), (x1 - rw, y1 - rw)):
            cv2.circle(wheels, (cx, cy), rw, 255, -1, cv2.LINE_AA)
            cv2.circle(steel, (cx, cy), max(1, int(0.4 / px)), 255, -1, cv2.LINE_AA)
        plastic += wheels.astype(_F) * (3.0 / 255)
        frame |= wheels > 0
    if steel.any():
        paths["steel"] = steel.astype(_F) * (0.3 / 255)
        frame |= steel > 0
    return depth_of(paths, (h, w)), frame, (x0, y0, x1, y1)


def _wiggle(rng: Rng, length: float, box: float) -> np.ndarray:
    """A smooth random curve of ~length cm inside a box x box cm square, as (x, y) points."""
    n = max(int(length / 0.5), 4)
    heading = np.cumsum(rng.normal(0, 0.25, n)) + U(rng, 0, 2 * np.pi)
    pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * 0.5, 0)
    pts -= pts.min(0)
    span = max(pts.max(), 1e-3)
    if span > box:
        pts *= box / span
    return pts - [0, box / 2]


def cable(rng: Rng, px: float) -> np.ndarray:
    box = U(rng, 12, 30)
    s = Sprite(box, box, px)
    pts = _wiggle(rng, U(rng, 25, 80), box)
    s.add("plastic", 0.35 * s.bar(pts, 0.45))
    s.add("copper", 0.06 * s.bar(pts, 0.2))
    if rng.random() < 0.6:  # plug at one end
        x, y = pts[-1]
        s.add(
            "plastic", 1.5 * s.poly([(x - 1.2, y - 1), (x + 1.2, y - 1), (x + 1.2, y + 1), (x - 1.2, y + 1)])
        )
        s.add(
            "copper",
            0.3 * s.poly([(x - 0.6, y - 0.4), (x + 0.6, y - 0.4), (x + 0.6, y + 0.4), (x - 0.6, y + 0.4)]),
        )
    return trim(s.depth)


def laptop(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 28, 36), U(rng, 19, 24)
    s = Sprite(ln, wd, px)
    body = s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)])
    s.add("aluminium", U(rng, 0.15, 0.35) * body)  # case
    s.add("plastic", 0.4 * body)
    s.add("glass", 0.1 * body)  # display
    keys_ = (np.sin(s.x / 1.6 * 2 * np.pi) > 0.6) & (np.sin(s.y / 1.6 * 2 * np.pi) > 0.6) & (s.y < 0)
    s.add("plastic", 0.3 * body * keys_)  # keyboard
    # Battery: pouch/cylindrical cells in a row along one long side (steel cans + electrolyte);
    # main board with copper and chips.
    n_cells = int(rng.integers(3, 7))
    cell_w = ln * 0.8 / n_cells
    for k in range(n_cells):
        x0 = ln * 0.1 + k * cell_w
        xa, xb, ya, yb = x0 + 0.2, x0 + cell_w - 0.2, wd / 2 - 6.5, wd / 2 - 1
        cell = s.poly([(xa, ya), (xb, ya), (xb, yb), (xa, yb)])
        s.add("steel", 0.04 * cell)
        s.add("organic", 0.5 * cell)
    s.add(
        "copper",
        0.03 * s.poly([(ln * 0.15, -wd / 2 + 1.5), (ln * 0.7, -wd / 2 + 1.5), (ln * 0.7, 0), (ln * 0.15, 0)]),
    )
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = U(rng, ln * 0.2, ln * 0.65), U(rng, -wd / 2 + 2.5, -1.5)
        s.add(
            "copper",
            0.15
            * s.poly(
                [(cx - 0.8, cy - 0.8), (cx + 0.8, cy - 0.8), (cx + 0.8, cy + 0.8), (cx - 0.8, cy + 0.8)]
            ),
        )
    s.add("copper", 0.08 * s.ring((ln * 0.8, -wd / 4), (2.5, 2.5), 0.4))  # fan
    return trim(s.depth)


def charger(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 5, 11), U(rng, 4, 7)
    s = Sprite(ln + 2, wd, px)
    s.add("plastic", U(rng, 2.5, 4.0) * s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)]))
    s.add(
        "steel",
        1.0
        * s.poly(
            [(ln * 0.2, -wd * 0.3), (ln * 0.55, -wd * 0.3), (ln * 0.55, wd * 0.3), (ln * 0.2, wd * 0.3)]
        ),
    )
    s.add("copper", 0.8 * s.ring((ln * 0.37, 0), (ln * 0.1, wd * 0.2), 0.4))
    for y in (-0.8, 0.8):  # plug pins
        s.add("copper", 0.25 * s.bar([(ln, y), (ln + 1.8, y)], 0.45))
    return trim(s.depth)


def keys(rng: Rng, px: float) -> np.ndarray:
    s = Sprite(14, 14, px)
    n = int(rng.integers(1, 5))
    s.add("steel", 0.25 * s.ring((2.0, 0.0), (1.4, 1.4), 0.18))
    for k in range(n):
        a = U(rng, -1.0, 1.0) + k * 0.5
        c, si = np.cos(a), np.sin(a)
        ln, hw = U(rng, 4.5, 6.5), U(rng, 1.2, 1.6)
        pts = [
            (0, -hw),
            (2.2, -hw),
            (2.2, -0.45),
            (2.2 + ln * 0.7, -0.45),
            (2.2 + ln * 0.7, 0.4),
            (2.2, 0.4),
            (2.2, hw),
            (0, hw),
        ]
        pts = [(3.3 + x * c - y * si, x * si + y * c) for x, y in pts]
        s.add("steel", U(rng, 0.15, 0.25) * s.poly(pts))
    return trim(s.depth)


def zip_line(rng: Rng, px: float) -> np.ndarray:
    ln = U(rng, 15, 45)
    s = Sprite(ln, 3, px)
    s.add("plastic", 0.15 * s.bar([(0, 0), (ln, 0)], 1.8))
    teeth = (np.sin(s.x * (2 * np.pi / 0.3)) > 0).astype(_F)
    s.add(rng.choice(["steel", "aluminium"]), 0.12 * s.bar([(0, 0), (ln, 0)], 0.6) * teeth)
    xs = U(rng, 0, ln - 3)
    s.add("steel", 0.35 * s.poly([(xs, -0.7), (xs + 3, -0.5), (xs + 3, 0.5), (xs, 0.7)]))  # slider + pull
    return trim(s.depth)


def coins(rng: Rng, px: float) -> np.ndarray:
    s = Sprite(8, 8, px)
    for _ in range(int(rng.integers(1, 6))):
        r = U(rng, 0.9, 1.3)
        cx, cy = U(rng, r, 8 - r), U(rng, -4 + r, 4 - r)
        s.add(rng.choice(["steel", "copper"]), 0.2 * (s.disc((cx, cy), r) > 0))
    return trim(s.depth)


def phone(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 13.5, 16.5), U(rng, 6.5, 7.8)
    s = Sprite(ln, wd, px)
    body = s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)])
    s.add("glass", 0.12 * body)  # front and back glass
    s.add(
        "aluminium",
        0.5
        * (
            body
            - s.poly(
                [
                    (0.3, -wd / 2 + 0.3),
                    (ln - 0.3, -wd / 2 + 0.3),
                    (ln - 0.3, wd / 2 - 0.3),
                    (0.3, wd / 2 - 0.3),
                ]
            )
        ),
    )  # frame
    s.add(
        "organic",
        0.45
        * s.poly(
            [(ln * 0.3, -wd * 0.4), (ln * 0.95, -wd * 0.4), (ln * 0.95, wd * 0.4), (ln * 0.3, wd * 0.4)]
        ),
    )
    s.add(
        "copper",
        0.05 * s.poly([(0.5, -wd * 0.4), (ln * 0.28, -wd * 0.4), (ln * 0.28, wd * 0.4), (0.5, wd * 0.4)]),
    )
    s.add("steel", 0.3 * s.ring((1.5, -wd * 0.25), (0.6, 0.6), 0.15))  # camera ring
    return trim(s.depth)


def belt(rng: Rng, px: float) -> np.ndarray:
    box = U(rng, 18, 30)
    s = Sprite(box, box, px)
    pts = _wiggle(rng, U(rng, 50, 100), box)
    s.add("organic", 0.45 * s.bar(pts, U(rng, 2.8, 3.8)))  # leather strap
    x, y = pts[0]
    bw, bh = U(rng, 4, 6), U(rng, 4, 5.5)
    s.add("steel", U(rng, 0.3, 0.6) * s.ring((x, y), (bw / 2, bh / 2), 0.5))  # buckle frame
    s.add("steel", 0.3 * s.bar([(x - bw / 2, y), (x + bw / 2, y)], 0.35))  # prong
    return trim(s.depth)


def shoe(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 24, 31), U(rng, 8, 11)
    s = Sprite(ln, wd, px)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    waist = 1 - 0.25 * np.exp(-(((np.cos(t) + 0.1) / 0.35) ** 2))  # narrow arch
    sole = s.poly(
        [(ln / 2 + ln / 2 * np.cos(a), wd / 2 * np.sin(a) * k) for a, k in zip(t, waist, strict=True)]
    )
    s.add("organic", U(rng, 2.0, 3.5) * sole)  # rubber sole
    s.add(
        "organic",
        U(rng, 1.0, 3.0)
        * s.poly(
            [(ln * 0.15, -wd * 0.35), (ln * 0.75, -wd * 0.35), (ln * 0.75, wd * 0.35), (ln * 0.15, wd * 0.35)]
        ),
    )  # upper, folded
    if rng.random() < 0.5:
        s.add("steel", 0.2 * s.bar([(ln * 0.35, 0), (ln * 0.6, 0)], 1.0))  # steel shank
    for k in range(int(rng.integers(0, 6))):
        s.add("steel", (s.disc((ln * (0.5 + 0.05 * k), -wd * 0.2), 0.25) > 0) * 0.3)  # eyelets
    return trim(s.depth)


def book(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 15, 25), U(rng, 11, 17)
    s = Sprite(ln, wd, px)
    s.add("paper", U(rng, 1.2, 4.0) * s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)]))
    return trim(s.depth)


def umbrella(rng: Rng, px: float) -> np.ndarray:
    ln = U(rng, 22, 30)
    s = Sprite(ln + 8, 6, px)
    s.add("organic", 1.2 * s.poly([(6, -2.2), (6 + ln, -0.4), (6 + ln, 0.4), (6, 2.2)]))  # folded canopy
    for k in range(8):
        y = (k - 3.5) * 0.45
        s.add("steel", 0.15 * s.bar([(6, y), (6 + ln, y * 0.15)], 0.2))  # ribs
    s.add("aluminium", s.chord(0.6) * s.span(0, 6 + ln))  # shaft
    s.add("plastic", 2.5 * s.poly([(0, -1.5), (6, -1.5), (6, 1.5), (0, 1.5)]))  # handle
    return trim(s.depth)


# (model, mean count per bag)
CLUTTER_ITEMS = (
    (cable, 1.3), (laptop, 0.25), (charger, 0.4), (keys, 0.5), (zip_line, 1.0), (coins, 0.3),
    (phone, 0.4), (belt, 0.25), (shoe, 0.35), (book, 0.35), (umbrella, 0.15),
)  # fmt: skip
