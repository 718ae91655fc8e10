"""The DICOS listener's bags: which received DX images make one bag, and when a bag is complete
(docs/dicos.md, "Bags").

A bag is every DX of one Study Instance UID; its views are grouped by Series Instance UID
(``xscreen.scans.dicos.dx.group_views``), each a HIGH and a LOW. Bookkeeping only, no network and no disk:
service/dicos_listener.py keeps one ``Bag`` per study waiting to be complete, asks ``BagRules.refusal``
before it spools a DX, ``BagRules.complete`` after each DX, on each association release and on each sweep,
and ``BagRules.expired`` on each sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xscreen.scans import ScanError
from xscreen.scans.dicos.dx import DxImage, dx_pair, group_views

# what completed a bag (the label of xscreen_dicos_bags_complete_total)
VIEWS, RELEASE, WAIT, RECOVERED = "views", "release", "wait", "recovered"


def shape_only(image: DxImage) -> DxImage:
    """``image`` without its pixels (a read-only, zero-strided array of the same shape and type): all that
    pairing checks need, so a bag waiting for its other images holds none of its pixels in memory."""
    pixels = np.broadcast_to(np.zeros((), image.pixels.dtype), image.pixels.shape)
    return dataclasses.replace(image, pixels=pixels)


@dataclass
class Bag:
    """A study's DX received so far (spooled, in arrival order) while its bag is not complete."""

    study_uid: str
    study: Path  # its spool folder
    calling_ae: str  # the AE title that sent its first DX (named in the audit record)
    last: float  # time.monotonic() when its latest DX arrived
    images: list[DxImage] = field(default_factory=list)  # shape_only: no pixels kept

    def add(self, image: DxImage, now: float) -> None:
        self.images.append(shape_only(image))
        self.last = max(self.last, now)

    def views(self) -> list[list[DxImage]]:
        return group_views(self.images)

    def order(self) -> list[str]:
        """SOP Instance UIDs in arrival order: the order of the bag's views in the answer and the TDR."""
        return [image.sop_instance_uid for image in self.images]


def _describe(views: list[list[DxImage]]) -> str:
    """Which views lack an energy, e.g. ``view 1 (series 1.2.3): HIGH only``."""
    missing = [
        f"view {i} (series {v[0].series_uid or '?'}): {v[0].energy or 'one image'} only"
        for i, v in enumerate(views)
        if len(v) < 2
    ]
    return "; ".join(missing)


@dataclass(frozen=True)
class BagRules:
    """When a study's DX make a complete bag (the settings XSCREEN_DICOS_BAG_VIEWS, _BAG_WAIT_S,
    _PAIR_TIMEOUT_S and XSCREEN_MAX_VIEWS)."""

    views: int | None  # every bag has exactly this many views; None: as many as the sender sends
    wait_s: float
    pair_timeout_s: float
    max_views: int

    @classmethod
    def from_settings(cls, settings) -> BagRules:
        return cls(
            settings.dicos_bag_views,
            settings.dicos_bag_wait_s,
            settings.dicos_pair_timeout_s,
            settings.max_views,
        )

    @property
    def view_limit(self) -> int:
        return self.views if self.views is not None else self.max_views

    def refusal(self, bag: Bag | None, image: DxImage) -> tuple[str, str] | None:
        """(metric result, why) when ``image`` does not fit its study's bag, so that it is not spooled (the
        C-STORE is answered C000); None when it fits."""
        if bag is None:
            return None
        series = [im for im in bag.images if im.series_uid == image.series_uid]
        if len(series) >= 2:
            return "refused", f"series {image.series_uid or '?'} already has its two energies"
        if series:
            try:
                dx_pair(series[0], image)  # two HIGHs, two LOWs, sizes differ
            except ScanError as exc:
                return "refused", str(exc)
            return None
        views = len(group_views([*bag.images, image]))
        if views > self.view_limit:
            setting = "XSCREEN_DICOS_BAG_VIEWS" if self.views is not None else "XSCREEN_MAX_VIEWS"
            return "too_many_views", (
                f"a new series would make view {views} of the study; a bag has at most "
                f"{self.view_limit} ({setting})"
            )
        return None

    def complete(self, bag: Bag, now: float, *, released: bool = False) -> str | None:
        """What makes ``bag`` complete now (``VIEWS``, ``RELEASE`` or ``WAIT``), or None.

        With ``views`` set: as soon as that many views have both energies, whatever else happens. Without:
        every view has both energies and either an association that sent some of them was just released
        (``released``) or ``wait_s`` has passed since the study's last DX."""
        views = bag.views()
        if not all(len(v) == 2 for v in views):
            return None
        if self.views is not None:
            return VIEWS if len(views) == self.views else None
        if released:
            return RELEASE
        return WAIT if now - bag.last >= self.wait_s else None

    def expired(self, bag: Bag, now: float) -> str | None:
        """Why ``bag`` is rejected (its study moved to rejected/), when it is not complete
        ``pair_timeout_s`` after its last DX; None while it may still complete."""
        if now - bag.last <= self.pair_timeout_s:
            return None
        views, waited = bag.views(), f"{self.pair_timeout_s:g} s"
        if any(len(v) < 2 for v in views):
            return f"second energy not received within {waited} ({_describe(views)})"
        if self.views is not None and len(views) < self.views:
            return f"{len(views)} of {self.views} views (XSCREEN_DICOS_BAG_VIEWS) received within {waited}"
        return None
