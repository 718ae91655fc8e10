"""Which image of a pair is the high-energy one: a physics check that catches exchanged parts.

docs/method.md §1a: every material attenuates the low-energy beam more than the high-energy beam
(its linear attenuation coefficient falls with photon energy), so where an object lies in the beam the
high-energy image, normalised by its own unattenuated (air) level, is brighter than the low-energy one.
A pair whose "high" image is darker at most of the pixels where something attenuates has its parts
exchanged. Pixels of air or belt (no attenuation) and opaque pixels (both images at the noise floor)
say nothing and are left out; a scan with too few attenuating pixels (an empty belt) is undetermined
and passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xscreen.scans.formats import ScanError

SAMPLE_PIXELS = 262_144  # pixels sampled (a regular grid); the verdict needs no more
AIR_PERCENTILE = 99.5  # an image's unattenuated level: the brightest pixels (air around the bag)
MIN_AIR_LEVEL = 64.0  # below this an image has no usable air level (all dark): undetermined
ATTENUATING_BELOW = 0.9  # normalised transmission under which a pixel counts as "something in the beam"
OPAQUE_BELOW = 0.03  # both images under this: noise floor, left out
MIN_ATTENUATING = 256  # fewer attenuating pixels than this: undetermined
SWAPPED_ABOVE = 0.5  # share of attenuating pixels where "high" is darker than "low" that means swapped


class EnergiesSwappedError(ScanError):
    """The part sent as high-energy is darker than the low-energy part: the two look exchanged."""


@dataclass(frozen=True)
class EnergyOrder:
    """The check's evidence: ``verdict`` is 'ok', 'swapped' or 'undetermined'."""

    verdict: str
    darker_share: float  # share of attenuating pixels where the high image is darker (nan if none)
    attenuating: int  # attenuating pixels among those sampled

    def describe(self) -> str:
        if self.verdict == "undetermined":
            return f"undetermined ({self.attenuating} attenuating pixels sampled, {MIN_ATTENUATING} needed)"
        return (
            f"the high-energy image is darker than the low-energy image at {100 * self.darker_share:.1f}% "
            f"of the {self.attenuating} attenuating pixels sampled"
        )


def _sample(img: np.ndarray, step: int) -> np.ndarray:
    return np.asarray(img[::step, ::step], dtype=np.float32)


def energy_order(high: np.ndarray, low: np.ndarray) -> EnergyOrder:
    """Judge from the pixels whether ``high`` really is the high-energy image (docs/method.md §1a)."""
    step = max(1, math.ceil(math.sqrt(high.size / SAMPLE_PIXELS)))
    h, lo = _sample(high, step), _sample(low, step)
    air_h, air_lo = (float(np.percentile(x, AIR_PERCENTILE)) for x in (h, lo))
    if min(air_h, air_lo) < MIN_AIR_LEVEL:
        return EnergyOrder("undetermined", float("nan"), 0)
    th, tl = h / air_h, lo / air_lo  # transmission relative to each image's own air level
    mask = (np.minimum(th, tl) < ATTENUATING_BELOW) & (np.maximum(th, tl) >= OPAQUE_BELOW)
    count = int(mask.sum())
    if count < MIN_ATTENUATING:
        return EnergyOrder("undetermined", float("nan"), count)
    share = float(np.count_nonzero(th[mask] < tl[mask])) / count
    return EnergyOrder("swapped" if share > SWAPPED_ABOVE else "ok", share, count)


def check_energy_order(high: np.ndarray, low: np.ndarray, *, labelled_by: str | None = None) -> EnergyOrder:
    """``energy_order``, raising ``EnergiesSwappedError`` when the parts look exchanged.

    ``labelled_by`` names what said which image is which (a DICOS pair: "Image Type (0008,0008)");
    default: the parts' names 'high' and 'low'.
    """
    order = energy_order(high, low)
    if order.verdict == "swapped":
        what = (
            f"the images that {labelled_by} labels HIGH and LOW look exchanged"
            if labelled_by
            else "the parts 'high' and 'low' look exchanged"
        )
        raise EnergiesSwappedError(
            f"{order.describe()}; {what} (for a scanner whose images follow another convention, "
            "turn this check off: XSCREEN_CHECK_ENERGY_ORDER=false)"
        )
    return order
