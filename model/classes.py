"""The 12 CLCXray classes: category ids, names and their group (cutter / liquid container)."""

from __future__ import annotations

from dataclasses import dataclass

CUTTER = "cutter"
LIQUID_CONTAINER = "liquid container"


@dataclass(frozen=True)
class ThreatClass:
    category_id: int  # the dataset's own COCO category id
    name: str
    group: str


# Order and ids follow the category table of the paper (Table II): cutters and liquid
# containers interleaved as the dataset lists them. A real CLCXray json is matched to these by
# normalised name (see ``normalise_name``), so "SwissArmyKnife" and "swiss army knife" agree.
CLCXRAY_CLASSES: tuple[ThreatClass, ...] = (
    ThreatClass(1, "blade", CUTTER),
    ThreatClass(2, "dagger", CUTTER),
    ThreatClass(3, "knife", CUTTER),
    ThreatClass(4, "scissors", CUTTER),
    ThreatClass(5, "tin", LIQUID_CONTAINER),
    ThreatClass(6, "cans", LIQUID_CONTAINER),
    ThreatClass(7, "carton drinks", LIQUID_CONTAINER),
    ThreatClass(8, "glass bottle", LIQUID_CONTAINER),
    ThreatClass(9, "plastic bottle", LIQUID_CONTAINER),
    ThreatClass(10, "vacuum cup", LIQUID_CONTAINER),
    ThreatClass(11, "spray cans", LIQUID_CONTAINER),
    ThreatClass(12, "swiss army knife", CUTTER),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLCXRAY_CLASSES)
CATEGORY_IDS: tuple[int, ...] = tuple(c.category_id for c in CLCXRAY_CLASSES)
GROUP_BY_NAME: dict[str, str] = {c.name: c.group for c in CLCXRAY_CLASSES}


def normalise_name(name: str) -> str:
    """Compare class names ignoring case, spaces, underscores and hyphens."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def group_of(name: str) -> str:
    """Group (cutter / liquid container) of a class name, 'other' for a name outside CLCXray."""
    key = normalise_name(name)
    for c in CLCXRAY_CLASSES:
        if normalise_name(c.name) == key:
            return c.group
    return "other"
