"""Object models: the 12 CLCXray threat classes and similar-looking (unlabelled) clutter, in cm."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xscreen.training.synth.sprite import Sprite, trim

Rng = np.random.Generator
U = Rng.uniform


def _handle(s: Sprite, x0: float, x1: float, width: float, thick: float, material: str) -> None:
    """Rounded handle with an elliptic cross-section between x0 and x1."""
    half = width / 2
    ell = np.sqrt(np.maximum(1.0 - (s.y / half) ** 2, 0.0))
    s.add(material, thick * ell * s.span(x0, x1))


# --- cutters -----------------------------------------------------------------------------------


def knife(rng: Rng, px: float) -> np.ndarray:
    bl, bw = U(rng, 8, 20), U(rng, 1.6, 3.6)
    hl, hw = U(rng, 8.5, 12), U(rng, 1.8, 2.6)
    s = Sprite(hl + bl, max(bw, hw), px)
    _handle(s, 0, hl, hw, U(rng, 1.2, 2.0), rng.choice(["plastic", "organic"]))  # plastic or wood
    s.add("steel", 0.2 * s.poly([(0.3, -hw * 0.3), (hl, -hw * 0.3), (hl, hw * 0.3), (0.3, hw * 0.3)]))  # tang
    for k in range(int(rng.integers(0, 4))):
        s.add("steel", s.disc((hl * (0.25 + 0.25 * k), 0.0), 0.22) * 4)  # rivets through the handle
    top, bot = -bw / 2, bw / 2
    pts = [(hl, top), (hl + bl * 0.8, top), (hl + bl, top + bw * 0.15), (hl + bl * 0.7, bot), (hl, bot)]
    blade = s.poly(pts)
    taper = np.clip(0.05 + 0.2 * (bot - s.y) / bw, 0.04, 0.25)  # thick spine -> thin edge
    s.add("steel", blade * taper)
    return trim(s.depth)


def dagger(rng: Rng, px: float) -> np.ndarray:
    bl, bw = U(rng, 10, 24), U(rng, 2.0, 4.0)
    hl, gw = U(rng, 9, 13), U(rng, 5, 9)
    s = Sprite(hl + 1.0 + bl, gw, px)
    _handle(s, 0.8, hl, U(rng, 2.0, 2.8), U(rng, 2.0, 2.8), rng.choice(["plastic", "organic"]))
    s.add("steel", s.disc((0.6, 0.0), U(rng, 0.9, 1.3)))  # pommel
    s.add("steel", 0.25 * s.poly([(0.5, -0.4), (hl, -0.4), (hl, 0.4), (0.5, 0.4)]))  # tang
    s.add(
        "steel", 0.9 * s.poly([(hl, -gw / 2), (hl + 1.0, -gw / 2), (hl + 1.0, gw / 2), (hl, gw / 2)])
    )  # guard
    x0 = hl + 1.0
    blade = s.poly([(x0, -bw / 2), (x0 + bl, 0.0), (x0, bw / 2)])
    half = np.maximum(bw / 2 * (1 - (s.x - x0) / bl), 1e-3)
    s.add("steel", blade * (0.05 + 0.35 * np.clip(1 - np.abs(s.y) / half, 0, 1)))  # diamond section
    return trim(s.depth)


def blade(rng: Rng, px: float) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # utility-knife trapezoid blade with two notches
        s = Sprite(6.2, 2.0, px)
        t = U(rng, 0.05, 0.07) * rng.integers(1, 4)  # a few stacked blades
        s.add("steel", t * s.poly([(0, -0.95), (6.1, -0.95), (4.7, 0.95), (1.4, 0.95)]))
        for xc in (2.4, 3.7):
            s.add("steel", -t * s.poly([(xc - 0.2, -0.95), (xc + 0.2, -0.95), (xc, -0.6)]))
    elif kind == 1:  # snap-off blade with diagonal score lines
        ln = U(rng, 8, 11)
        s = Sprite(ln, 1.9, px)
        t = U(rng, 0.04, 0.06)
        s.add("steel", t * s.poly([(0, -0.9), (ln - 0.9, -0.9), (ln, 0.9), (0, 0.9)]))
        for k in range(1, int(ln / 0.9)):
            x = k * 0.9
            s.add("steel", -0.5 * t * s.bar([(x, -0.9), (x + 0.9, 0.9)], 0.06))
    else:  # double-edge razor blade(s) with the central slot
        s = Sprite(4.4, 2.3, px)
        t = 0.01 * rng.integers(2, 8)  # 0.1 mm each, a small pack
        s.add("steel", t * s.poly([(0, -1.1), (4.3, -1.1), (4.3, 1.1), (0, 1.1)]))
        s.add("steel", -t * s.poly([(0.9, -0.15), (3.4, -0.15), (3.4, 0.15), (0.9, 0.15)]))
        for xc in (0.7, 3.6):
            s.add("steel", -t * (s.disc((xc, 0.0), 0.3) > 0))
    return trim(s.depth)  # depth_of clips the cut-outs' negative paths at 0


def scissors(rng: Rng, px: float) -> np.ndarray:
    ln = U(rng, 12, 22)
    piv = ln * U(rng, 0.4, 0.5)
    s = Sprite(ln, ln * 0.55, px)
    opening = np.deg2rad(U(rng, 0, 18))
    for sign in (-1, 1):
        a = sign * opening / 2
        c, si = np.cos(a), np.sin(a)
        pts = [
            (-0.9, -0.7 * sign),
            (ln - piv, -0.1 * sign),
            (ln - piv - 0.3, 0.35 * sign),
            (-0.9, 0.5 * sign),
        ]
        pts = [(piv + x * c - y * si, x * si + y * c) for x, y in pts]
        s.add("steel", 0.22 * s.poly(pts))
        shank = [(piv, 0.0), (piv * 0.55, sign * (0.8 + piv * np.sin(opening / 2)))]
        s.add("steel", 0.25 * s.bar(shank, 0.6))
        ry = 0.8 + piv * np.sin(opening / 2) + 1.2
        s.add("plastic", 0.8 * s.ring((piv * 0.3, sign * ry), (piv * 0.28, 1.3), 0.55))
    s.add("steel", s.disc((piv, 0.0), 0.35) * 1.5)  # pivot screw
    return trim(s.depth)


def swiss_army_knife(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 8.4, 11.1), U(rng, 2.3, 3.3)
    opened = rng.random() < 0.4
    bl = ln * 0.75 if opened else 0.0
    s = Sprite(ln + bl + 1.5, wd, px)
    r = wd / 2
    ends = np.linspace(-np.pi / 2, np.pi / 2, 9)
    outline = [(ln - r + r * np.cos(t), r * np.sin(t)) for t in ends]
    outline += [(r - r * np.cos(t), -r * np.sin(t)) for t in ends]
    body = s.poly(outline)
    s.add("plastic", 0.7 * body)  # red scales, both sides
    inner = s.poly([(x * 0.97 + 0.15, y * 0.85) for x, y in outline])
    s.add("steel", U(rng, 0.5, 1.1) * inner)  # liners + folded tools
    s.add("steel", 0.3 * s.ring((-0.6, 0.0), (0.6, 0.45), 0.12))  # key ring
    for xc in (r, ln - r):
        s.add("steel", s.disc((xc, 0.0), 0.2) * 4)  # rivets / axles
    if opened:
        x0 = ln - 0.5
        s.add(
            "steel",
            s.poly([(x0, -r * 0.5), (x0 + bl, -r * 0.4), (x0 + bl * 0.75, r * 0.45), (x0, r * 0.45)]) * 0.18,
        )
    return trim(s.depth)


# --- liquid containers ------------------------------------------------------------------------


def _fill(s: Sprite, radius, x_from: float, x_to: float, material: str = "organic") -> None:
    if x_to > x_from:
        s.add(material, s.chord(radius) * s.span(x_from, x_to))


def _end_disc(s: Sprite, radius, x: float, thick: float, material: str) -> None:
    """A disc (lid, base) seen edge-on at x: chord across the disc times its thickness / pixel."""
    s.add(material, s.chord(radius) * s.span(x - thick / 2, x + thick / 2))


def cans(rng: Rng, px: float) -> np.ndarray:
    r, h = U(rng, 2.6, 3.4), U(rng, 9.5, 16.0)
    if h > 14:
        r = U(rng, 2.5, 2.9)  # slim can
    s = Sprite(h, 2 * r, px)
    prof = s.profile([0, 0.7, 1.0, h - 1.3, h - 0.3, h], [r - 0.5, r - 0.05, r, r, r - 0.45, r - 0.4])
    s.add("aluminium", s.shell(prof, 0.012))
    for x in (0.05, h - 0.05):
        _end_disc(s, r - 0.3, x, 0.12, "aluminium")  # lids with their double seams
    fill = 0.0 if rng.random() < 0.1 else U(rng, 0.6, 0.96)
    _fill(s, np.maximum(prof - 0.012, 0), 0.1, fill * h)
    return trim(s.depth)


def spray_cans(rng: Rng, px: float) -> np.ndarray:
    r, h = U(rng, 2.2, 3.3), U(rng, 12, 22)
    cap = U(rng, 3.0, 5.0) if rng.random() < 0.7 else 0.0
    s = Sprite(h + cap + 1.0, 2 * r, px)
    metal, wall = ("aluminium", 0.04) if rng.random() < 0.6 else ("steel", 0.02)
    prof = s.profile([0, 0.3, h * 0.82, h * 0.97, h], [r - 0.2, r, r, r * 0.45, r * 0.3])
    s.add(metal, s.shell(prof, wall))
    _end_disc(s, r - 0.2, 0.1, 0.1, metal)
    _fill(s, np.maximum(prof - wall, 0), 0.2, h * U(rng, 0.3, 0.85))
    s.add(
        "steel", 0.3 * s.poly([(h * 0.95, -0.25), (h + 0.8, -0.25), (h + 0.8, 0.25), (h * 0.95, 0.25)])
    )  # valve
    s.add("plastic", 0.2 * s.bar([(0.4, 0.0), (h * 0.95, 0.0)], 0.3))  # dip tube
    if cap:
        cp = s.profile(
            [h * 0.8, h * 0.8 + 0.01, h * 0.8 + cap, h * 0.8 + cap + 0.01], [0, r + 0.05, r * 0.9, 0]
        )
        s.add("plastic", s.shell(cp, 0.12))
    return trim(s.depth)


def tin(rng: Rng, px: float) -> np.ndarray:
    r, h = U(rng, 3.5, 5.5), U(rng, 4.0, 12.0)
    s = Sprite(h, 2 * r, px)
    prof = s.profile([0, h], [r, r])
    s.add("steel", s.shell(prof, 0.02))
    for x in (0.08, h - 0.08):
        _end_disc(s, r, x, 0.16, "steel")  # rolled seams and lids
    for k in range(1, int(h / 1.2)):
        s.add("steel", 0.5 * s.shell(prof, 0.02) * s.span(k * 1.2 - 0.1, k * 1.2 + 0.1))  # beads
    _fill(s, r - 0.02, 0.15, h * U(rng, 0.85, 1.0) - 0.15)  # food
    return trim(s.depth)


def carton_drinks(rng: Rng, px: float) -> np.ndarray:
    ln, wd, dp = U(rng, 6, 14), U(rng, 4, 7.5), U(rng, 3.5, 6.5)
    s = Sprite(ln + 0.8, wd, px)
    face = s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)])
    s.add("paper", 0.1 * face)  # front and back walls
    s.add("aluminium", 0.0013 * face)  # the foil layer of the laminate
    edge = face - s.poly(
        [(0.1, -wd / 2 + 0.1), (ln - 0.1, -wd / 2 + 0.1), (ln - 0.1, wd / 2 - 0.1), (0.1, wd / 2 - 0.1)]
    )
    s.add("paper", dp * 0.05 / 0.1 * edge)  # side walls seen edge-on
    s.add(
        "paper", 0.3 * s.poly([(ln, -wd / 2), (ln + 0.8, -wd / 2), (ln + 0.8, wd / 2), (ln, wd / 2)])
    )  # seal fin
    fill = U(rng, 0.7, 1.0)
    s.add("organic", (dp - 0.1) * face * s.span(0, ln * fill))
    if rng.random() < 0.3:
        s.add("plastic", 0.05 * s.bar([(ln * 0.1, -wd / 2 + 0.4), (ln * 0.9, -wd / 2 + 0.4)], 0.5))  # straw
    return trim(s.depth)


def _bottle_profile(s: Sprite, h: float, r: float, rn: float, body: float, shoulder: float):
    xs = [0, 0.4, h * body, h * (body + shoulder), h - 0.4, h - 0.39, h]
    rs = [r * 0.92, r, r, rn, rn, rn + 0.15, rn + 0.15]
    return s.profile(xs, rs)


def glass_bottle(rng: Rng, px: float) -> np.ndarray:
    h, r = U(rng, 14, 30), U(rng, 2.4, 4.2)
    rn = U(rng, 0.9, 1.4)
    s = Sprite(h, 2 * r, px)
    prof = _bottle_profile(s, h, r, rn, U(rng, 0.5, 0.68), U(rng, 0.1, 0.2))
    wall = U(rng, 0.25, 0.45)
    s.add("glass", s.shell(prof, wall))
    _fill(s, np.maximum(prof - wall, 0), 0.0, 0.7, "glass")  # thick base
    _fill(s, np.maximum(prof - wall, 0), 0.7, h * U(rng, 0.15, 0.9))
    cap = rng.choice(["steel", "aluminium", "plastic"])
    cp = s.profile([h - 1.2, h - 1.19, h], [0, rn + 0.2, rn + 0.2])
    s.add(cap, s.shell(cp, 0.04 if cap != "plastic" else 0.15))
    return trim(s.depth)


def plastic_bottle(rng: Rng, px: float) -> np.ndarray:
    h, r = U(rng, 15, 32), U(rng, 2.8, 4.6)
    rn = U(rng, 1.1, 1.4)
    s = Sprite(h, 2 * r, px)
    prof = _bottle_profile(s, h, r, rn, U(rng, 0.55, 0.75), U(rng, 0.1, 0.2))
    s.add("plastic", s.shell(prof, 0.03))
    _fill(s, np.maximum(prof - 0.03, 0), 0.0, 0.25, "plastic")  # moulded base
    fill = 0.0 if rng.random() < 0.1 else U(rng, 0.2, 0.95)
    _fill(s, np.maximum(prof - 0.03, 0), 0.25, h * fill)
    cp = s.profile([h - 1.8, h - 1.79, h], [0, rn + 0.25, rn + 0.25])
    s.add("plastic", s.shell(cp, 0.15))
    return trim(s.depth)


def vacuum_cup(rng: Rng, px: float) -> np.ndarray:
    h, r = U(rng, 15, 27), U(rng, 3.0, 4.3)
    lid = U(rng, 3, 6)
    s = Sprite(h + lid, 2 * r + 0.3, px)
    outer = s.profile([0, 0.3, h], [r - 0.2, r, r])
    inner = s.profile([0.6, 0.8, h], [r - 0.55, r - 0.4, r - 0.4])
    s.add("steel", s.shell(outer, 0.05))  # double wall with a vacuum gap
    s.add("steel", s.shell(inner, 0.05))
    _end_disc(s, r - 0.2, 0.1, 0.1, "steel")
    _end_disc(s, r - 0.5, 0.7, 0.1, "steel")
    _fill(s, np.maximum(inner - 0.05, 0), 0.75, 0.75 + (h - 0.75) * U(rng, 0.0, 0.9))
    lp = s.profile([h - 1.0, h - 0.99, h + lid - 0.3, h + lid], [0, r + 0.15, r + 0.15, r - 0.3])
    s.add("plastic", s.shell(lp, 0.25))
    s.add("steel", 0.4 * s.shell(lp, 0.04) * s.span(h - 1.0, h + 0.5))  # threaded steel ring
    return trim(s.depth)


# Model per CLCXray class name (model.classes.CLASS_NAMES).
THREAT_MODELS: dict[str, Callable[[Rng, float], np.ndarray]] = {
    "blade": blade,
    "dagger": dagger,
    "knife": knife,
    "scissors": scissors,
    "tin": tin,
    "cans": cans,
    "carton drinks": carton_drinks,
    "glass bottle": glass_bottle,
    "plastic bottle": plastic_bottle,
    "vacuum cup": vacuum_cup,
    "spray cans": spray_cans,
    "swiss army knife": swiss_army_knife,
}


# --- similar-looking clutter (never annotated) -----------------------------------------------


def ruler(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 15, 30), U(rng, 1.8, 3.0)
    s = Sprite(ln, wd, px)
    s.add("steel", U(rng, 0.08, 0.15) * s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)]))
    return trim(s.depth)


def spoon_or_fork(rng: Rng, px: float) -> np.ndarray:
    ln = U(rng, 14, 21)
    s = Sprite(ln, 4.0, px)
    s.add("steel", 0.2 * s.bar([(0, 0), (ln * 0.68, 0)], 0.9))
    if rng.random() < 0.5:
        bowl = s.disc((ln * 0.84, 0.0), ln * 0.16) > 0
        s.add("steel", 0.12 * bowl)
    else:
        for k in range(4):
            y = (k - 1.5) * 0.55
            s.add("steel", 0.2 * s.bar([(ln * 0.66, y * 0.4), (ln * 0.75, y), (ln, y)], 0.28))
    return trim(s.depth)


def screwdriver_or_pen(rng: Rng, px: float) -> np.ndarray:
    ln = U(rng, 13, 22)
    s = Sprite(ln, 3.0, px)
    hl = ln * U(rng, 0.35, 0.5)
    _handle(s, 0, hl, U(rng, 1.0, 2.8), 2.2, "plastic")
    s.add("steel", s.chord(U(rng, 0.1, 0.35)) * s.span(hl * 0.6, ln))
    return trim(s.depth)


def glass_jar(rng: Rng, px: float) -> np.ndarray:
    h, r = U(rng, 5, 11), U(rng, 2.5, 5.0)
    s = Sprite(h, 2 * r, px)
    prof = s.profile([0, h], [r, r])
    s.add("glass", s.shell(prof, 0.3))
    _fill(s, r - 0.3, 0.0, 0.5, "glass")
    _fill(s, r - 0.3, 0.5, h * U(rng, 0.4, 0.95))
    _end_disc(s, r, h - 0.1, 0.2, rng.choice(["steel", "aluminium"]))
    return trim(s.depth)


def flashlight_or_battery_pack(rng: Rng, px: float) -> np.ndarray:
    if rng.random() < 0.5:  # aluminium torch with cells inside
        h, r = U(rng, 12, 22), U(rng, 1.2, 2.2)
        s = Sprite(h, 2 * r + 1, px)
        prof = s.profile([0, h * 0.75, h * 0.8, h], [r, r, r * 1.3, r * 1.3])
        s.add("aluminium", s.shell(prof, 0.15))
        s.add("steel", s.shell(r * 0.85, 0.03) * s.span(0.5, h * 0.72))  # cells' steel cans
        _fill(s, r * 0.82, 0.5, h * 0.72)
    else:  # power bank: plastic box with 18650 cells
        ln, wd = U(rng, 9, 15), U(rng, 6, 8)
        s = Sprite(ln, wd, px)
        s.add("plastic", 0.4 * s.poly([(0, -wd / 2), (ln, -wd / 2), (ln, wd / 2), (0, wd / 2)]))
        n = int(wd // 1.9)
        for k in range(n):
            y0 = (k - (n - 1) / 2) * 1.85
            s.add("steel", s.shell(0.9, 0.03, y0) * s.span(0.5, min(ln - 0.5, 7.0)))
            s.add("organic", s.chord(0.87, y0) * s.span(0.5, min(ln - 0.5, 7.0)) * 1.5)
    return trim(s.depth)


def lotion_tube(rng: Rng, px: float) -> np.ndarray:
    ln, wd = U(rng, 10, 19), U(rng, 3.5, 6.0)
    s = Sprite(ln, wd, px)
    shape = s.poly(
        [(0, -wd / 2), (ln * 0.85, -wd * 0.35), (ln, -0.8), (ln, 0.8), (ln * 0.85, wd * 0.35), (0, wd / 2)]
    )
    s.add("plastic", 0.1 * shape)
    s.add("organic", U(rng, 1.0, 2.5) * shape * np.sqrt(np.maximum(1 - (2 * s.y / wd) ** 2, 0)))
    return trim(s.depth)


# Similar-looking clutter per threat group (placed over / next to objects of that group).
SIMILAR_CLUTTER: dict[str, tuple[Callable[[Rng, float], np.ndarray], ...]] = {
    "cutter": (ruler, spoon_or_fork, screwdriver_or_pen),
    "liquid container": (glass_jar, flashlight_or_battery_pack, lotion_tube),
}
