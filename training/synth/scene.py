"""One synthetic bag scan: place bag, clutter and threat objects, expose, measure boxes and overlaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xscreen.model.classes import CLASS_NAMES, group_of
from xscreen.training.synth import clutter as cl
from xscreen.training.synth.objects import SIMILAR_CLUTTER, THREAT_MODELS
from xscreen.training.synth.physics import expose
from xscreen.training.synth.sprite import pose

# Pixel pitch: 0.8 mm at 640 px (a ~50 cm bag fills the frame); scaled for other sizes.
PITCH_CM_AT_640 = 0.08
# A pixel belongs to an object's own mask when the object alone attenuates the low-energy beam
# by more than 0.5 % (optical depth 0.005); boxes are the tight extent of that mask.
MASK_DEPTH = 0.005
# Challenging subset (paper Sec. V-F: "overlap between multiple objects, or between objects and
# similar backgrounds"): an image is flagged when at least one annotated object has >= 20 % of
# its mask covered by another threat object, or >= 20 % covered by similar-looking clutter.
CHALLENGING_MIN_OVERLAP = 0.2
OVERLAP_LEVELS = {"low": 0.1, "medium": 0.3, "high": 0.6}
OBJECTS_PER_IMAGE = ((1, 0.35), (2, 0.35), (3, 0.2), (4, 0.1))


@dataclass
class SynthObject:
    name: str  # CLCXray class name
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (tight around the mask)
    area: int  # mask pixels
    overlap: float  # share of the mask covered by other objects or discrete clutter
    overlap_objects: float  # ... by other threat objects only
    overlap_similar: float  # ... by similar-looking clutter only
    mask: np.ndarray | None = field(default=None, repr=False)  # the object's own mask, bool [h, w]
    origin: tuple[int, int] = (0, 0)  # (y, x) of mask[0, 0] in the image


@dataclass
class SynthScan:
    high: np.ndarray  # uint16 [H, W]
    low: np.ndarray
    objects: list[SynthObject] = field(default_factory=list)
    challenging: bool = False


@dataclass
class _Placed:
    name: str
    y: int
    x: int
    mask: np.ndarray  # bool [h, w]


def pitch_cm(height: int, width: int) -> float:
    return PITCH_CM_AT_640 * 640.0 / min(height, width)


def _stamp(depth: np.ndarray, sprite: np.ndarray, y: int, x: int) -> tuple[int, int, np.ndarray]:
    """Add a sprite at (y, x) (top-left, may be clipped by the image); return its clipped placement."""
    h, w = depth.shape[:2]
    sh, sw = sprite.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + sh, h), min(x + sw, w)
    part = sprite[y0 - y : y1 - y, x0 - x : x1 - x]
    depth[y0:y1, x0:x1] += part
    return y0, x0, part


def _random_inside(rng, bag_box, sh: int, sw: int) -> tuple[int, int] | None:
    bx0, by0, bx1, by1 = bag_box
    if sw > bx1 - bx0 or sh > by1 - by0:
        return None
    return int(rng.integers(by0, by1 - sh + 1)), int(rng.integers(bx0, bx1 - sw + 1))


def _near(rng, target: _Placed, sh: int, sw: int, h: int, w: int, spread: float) -> tuple[int, int] | None:
    """Top-left so that the new sprite's centre lands near the target's centre (forcing overlap)."""
    th, tw = target.mask.shape
    cy = target.y + th / 2 + rng.uniform(-spread, spread) * th / 2
    cx = target.x + tw / 2 + rng.uniform(-spread, spread) * tw / 2
    if sh > h or sw > w:
        return None
    y = int(np.clip(round(cy - sh / 2), 0, h - sh))
    x = int(np.clip(round(cx - sw / 2), 0, w - sw))
    return y, x


def measure(
    name: str, own: np.ndarray, y: int, x: int, owners: np.ndarray, clutter: np.ndarray, similar: np.ndarray
) -> SynthObject:
    """Tight box and overlap shares of one object whose mask ``own`` sits at (y, x).

    ``owners`` counts threat objects per pixel (this one included), ``clutter`` marks discrete
    clutter (similar-looking items included), ``similar`` the similar-looking clutter only.
    """
    h, w = own.shape
    area = int(own.sum())
    others = (owners[y : y + h, x : x + w] - own.astype(owners.dtype)) > 0
    disc = clutter[y : y + h, x : x + w]
    sim = similar[y : y + h, x : x + w]
    rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    box = (float(x + cols[0]), float(y + rows[0]), float(x + cols[-1] + 1), float(y + rows[-1] + 1))
    return SynthObject(
        name=name,
        box=box,
        area=area,
        overlap=float((own & (others | disc)).sum() / area),
        overlap_objects=float((own & others).sum() / area),
        overlap_similar=float((own & sim).sum() / area),
        mask=own,
        origin=(y, x),
    )


def is_challenging(objects: list[SynthObject]) -> bool:
    """Paper Sec. V-F subset rule, thresholded at CHALLENGING_MIN_OVERLAP (see above)."""
    return any(
        o.overlap_objects >= CHALLENGING_MIN_OVERLAP or o.overlap_similar >= CHALLENGING_MIN_OVERLAP
        for o in objects
    )


def make_scan(
    rng: np.random.Generator,
    height: int = 640,
    width: int = 640,
    overlap_rate: float = 0.3,
    similar_rate: float = 0.2,
) -> SynthScan:
    """Simulate one bag scan. ``overlap_rate``: chance that each further threat object is placed
    over an earlier one; ``similar_rate``: chance per object of similar-looking clutter on it."""
    px = pitch_cm(height, width)
    depth, frame_mask, bag_box = cl.bag(rng, height, width, px)
    clutter = frame_mask.copy()  # discrete clutter (counts as overlap); clothing/shell do not
    similar = np.zeros((height, width), bool)

    for item, mean in cl.CLUTTER_ITEMS:
        for _ in range(int(rng.poisson(mean))):
            sprite = pose(item(rng, px), rng)
            sh, sw = sprite.shape[:2]
            bx0, by0, bx1, by1 = bag_box
            y = int(rng.integers(by0 - sh // 3, max(by1 - 2 * sh // 3, by0 - sh // 3 + 1)))
            x = int(rng.integers(bx0 - sw // 3, max(bx1 - 2 * sw // 3, bx0 - sw // 3 + 1)))
            y0, x0, part = _stamp(depth, sprite, y, x)
            clutter[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] |= part[..., 0] > MASK_DEPTH

    counts, probs = zip(*OBJECTS_PER_IMAGE, strict=True)
    n_objects = int(rng.choice(counts, p=probs))
    placed: list[_Placed] = []
    owners = np.zeros((height, width), np.uint8)  # how many threat objects cover each pixel
    for _ in range(n_objects):
        name = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        for _attempt in range(4):
            sprite = pose(THREAT_MODELS[name](rng, px), rng)
            sh, sw = sprite.shape[:2]
            mask = sprite[..., 0] > MASK_DEPTH
            if placed and rng.random() < overlap_rate:
                pos = _near(rng, placed[int(rng.integers(len(placed)))], sh, sw, height, width, 0.6)
            else:
                pos = None
                for _try in range(6):  # prefer a spot that does not cover earlier objects
                    pos = _random_inside(rng, bag_box, sh, sw)
                    if pos is None or not (owners[pos[0] : pos[0] + sh, pos[1] : pos[1] + sw] & mask).any():
                        break
            if pos is not None:
                break
        if pos is None:
            continue  # does not fit in this bag in any of the tried poses
        y, x = pos
        depth[y : y + sh, x : x + sw] += sprite
        owners[y : y + sh, x : x + sw] += mask
        placed.append(_Placed(name, y, x, mask))

    # Similar-looking clutter: over an object of the matching group, and sometimes elsewhere.
    for obj in list(placed) + [None]:
        if rng.random() >= similar_rate:
            continue
        group = group_of(obj.name) if obj else ("cutter" if rng.random() < 0.5 else "liquid container")
        models = SIMILAR_CLUTTER[group]
        sprite = pose(models[int(rng.integers(len(models)))](rng, px), rng)
        sh, sw = sprite.shape[:2]
        pos = _near(rng, obj, sh, sw, height, width, 0.5) if obj else _random_inside(rng, bag_box, sh, sw)
        if pos is None:
            continue
        y0, x0, part = _stamp(depth, sprite, *pos)
        m = part[..., 0] > MASK_DEPTH
        similar[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] |= m
        clutter[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] |= m

    objects = [measure(p.name, p.mask, p.y, p.x, owners, clutter, similar) for p in placed]
    challenging = is_challenging(objects)
    high, low = expose(depth, rng)
    return SynthScan(high=high, low=low, objects=objects, challenging=challenging)
