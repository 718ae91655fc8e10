"""The DICOS bag rule without a network (service/dicos_bags.py, docs/dicos.md "Bags"): views grouped by
series, what a DX may not add to a bag, and when a bag is complete or rejected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xscreen.scans import ScanError
from xscreen.scans.dicos.dx import DxImage, bag_pairs, group_views
from xscreen.service.dicos_bags import RELEASE, VIEWS, WAIT, Bag, BagRules, shape_only

STUDY = "1.2.3"


def image(series: str, energy: str | None, n: int, shape=(8, 8)) -> DxImage:
    return DxImage(
        np.zeros(shape, np.uint16), energy, STUDY, series, f"1.2.3.{n}", "1.2.840", "1.2.840.10008.1.2.1"
    )


def bag_of(*images: DxImage, last: float = 0.0) -> Bag:
    bag = Bag(STUDY, Path("spool/study"), "SCANNER", last)
    for im in images:
        bag.add(im, last)
    return bag


RULES = BagRules(views=None, wait_s=5.0, pair_timeout_s=30.0, max_views=3)


def test_views_are_series_in_order_of_first_appearance():
    a_high, b_high, a_low, b_low = (
        image("A", "HIGH", 1),
        image("B", "HIGH", 2),
        image("A", "LOW", 3),
        image("B", "LOW", 4),
    )
    views = group_views([b_low, a_high, b_high, a_low])
    assert [[im.sop_instance_uid for im in v] for v in views] == [
        ["1.2.3.4", "1.2.3.2"],
        ["1.2.3.1", "1.2.3.3"],
    ]
    pairs = bag_pairs([b_low, a_high, b_high, a_low])
    assert [(p.high.series_uid, p.high.energy, p.low.energy) for p in pairs] == [
        ("B", "HIGH", "LOW"),
        ("A", "HIGH", "LOW"),
    ]


def test_a_study_of_one_high_and_one_low_in_two_series_is_one_view():
    high, low = image("A", "HIGH", 1), image("B", "LOW", 2)
    assert len(group_views([low, high])) == 1
    (pair,) = bag_pairs([low, high])
    assert (pair.high.series_uid, pair.low.series_uid) == ("A", "B")
    # not when the two are the same energy, differ in size, or a third image comes
    assert len(group_views([high, image("B", "HIGH", 2)])) == 2
    assert len(group_views([high, image("B", "LOW", 2, shape=(8, 9))])) == 2
    assert len(group_views([high, low, image("A", "LOW", 3)])) == 2


def test_bag_pairs_names_the_view_missing_an_energy():
    with pytest.raises(ScanError, match=r"view 1 \(series B\) has 1 DX image\(s\)"):
        bag_pairs([image("A", "HIGH", 1), image("A", "LOW", 2), image("B", "HIGH", 3)])


def test_a_waiting_bag_keeps_no_pixels():
    big = image("A", "HIGH", 1, shape=(2000, 3000))
    kept = shape_only(big)
    assert kept.pixels.shape == (2000, 3000) and kept.pixels.dtype == np.uint16
    assert kept.pixels.strides == (0, 0)  # one element, broadcast


def test_refusals():
    bag = bag_of(image("A", "HIGH", 1), image("A", "LOW", 2), image("B", "HIGH", 3))
    assert RULES.refusal(None, image("A", "HIGH", 9)) is None
    assert RULES.refusal(bag, image("A", "LOW", 9)) == ("refused", "series A already has its two energies")
    result, why = RULES.refusal(bag, image("B", "HIGH", 9))
    assert result == "refused" and "both DX images are HIGH ENERGY" in why
    result, why = RULES.refusal(bag, image("B", "LOW", 9, shape=(8, 9)))
    assert result == "refused" and "9x8" in why
    assert RULES.refusal(bag, image("B", "LOW", 9)) is None
    assert RULES.refusal(bag, image("C", "HIGH", 9)) is None  # view 3 of max_views 3
    full = bag_of(*bag.images, image("C", "HIGH", 4))
    assert RULES.refusal(full, image("D", "HIGH", 9)) == (
        "too_many_views",
        "a new series would make view 4 of the study; a bag has at most 3 (XSCREEN_MAX_VIEWS)",
    )
    fixed = BagRules(views=2, wait_s=5.0, pair_timeout_s=30.0, max_views=3)
    assert fixed.refusal(bag, image("C", "HIGH", 9))[0] == "too_many_views"


def test_complete_without_a_view_count_on_release_or_after_the_wait():
    unpaired = bag_of(image("A", "HIGH", 1), image("A", "LOW", 2), image("B", "HIGH", 3), last=100.0)
    assert RULES.complete(unpaired, 100.0, released=True) is None
    assert RULES.complete(unpaired, 1000.0) is None
    paired = bag_of(*unpaired.images, image("B", "LOW", 4), last=100.0)
    assert RULES.complete(paired, 100.0) is None
    assert RULES.complete(paired, 100.0, released=True) == RELEASE
    assert RULES.complete(paired, 104.9) is None
    assert RULES.complete(paired, 105.0) == WAIT


def test_complete_with_a_view_count_when_that_many_views_are_paired_and_not_before():
    rules = BagRules(views=2, wait_s=5.0, pair_timeout_s=30.0, max_views=3)
    one = bag_of(image("A", "HIGH", 1), image("A", "LOW", 2), last=100.0)
    assert rules.complete(one, 100.0, released=True) is None and rules.complete(one, 1000.0) is None
    two = bag_of(*one.images, image("B", "LOW", 3), image("B", "HIGH", 4), last=100.0)
    assert rules.complete(two, 100.0) == VIEWS


def test_expired_bags_say_what_is_missing():
    bag = bag_of(image("A", "HIGH", 1), image("A", "LOW", 2), image("B", "HIGH", 3), last=100.0)
    assert RULES.expired(bag, 130.0) is None
    assert (
        RULES.expired(bag, 130.5) == "second energy not received within 30 s (view 1 (series B): HIGH only)"
    )
    rules = BagRules(views=2, wait_s=5.0, pair_timeout_s=30.0, max_views=3)
    one = bag_of(image("A", "HIGH", 1), image("A", "LOW", 2), last=100.0)
    assert rules.expired(one, 131.0) == "1 of 2 views (XSCREEN_DICOS_BAG_VIEWS) received within 30 s"
    assert RULES.expired(one, 131.0) is None  # complete by the wait instead
