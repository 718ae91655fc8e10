"""The energy-order check (docs/method.md §1a): exchanged high/low parts are caught, valid scans pass."""

from __future__ import annotations

import numpy as np
import pytest

from xscreen.scans.energy import EnergiesSwappedError, check_energy_order, energy_order
from xscreen.training.synth.scene import make_scan


@pytest.fixture(scope="module")
def scans():
    # xscreen synth's defaults: overlap and similar-looking clutter included
    return [make_scan(np.random.default_rng(seed), 320, 320) for seed in range(40)]


def test_correct_order_passes_and_exchanged_order_is_caught(scans):
    for s in scans:
        ok = energy_order(s.high, s.low)
        assert ok.verdict == "ok", ok
        assert ok.darker_share < 0.01
        assert ok.attenuating >= 256
        swapped = energy_order(s.low, s.high)
        assert swapped.verdict == "swapped", swapped
        assert swapped.darker_share > 0.99


def test_the_error_says_what_was_measured_and_how_to_turn_it_off(scans):
    s = scans[0]
    with pytest.raises(EnergiesSwappedError) as err:
        check_energy_order(s.low, s.high)
    msg = str(err.value)
    assert "darker than the low-energy image at" in msg and "attenuating pixels sampled" in msg
    assert "'high' and 'low' look exchanged" in msg and "XSCREEN_CHECK_ENERGY_ORDER=false" in msg
    with pytest.raises(EnergiesSwappedError, match="Image Type \\(0008,0008\\) labels HIGH and LOW"):
        check_energy_order(s.low, s.high, labelled_by="Image Type (0008,0008)")
    assert check_energy_order(s.high, s.low).verdict == "ok"


def test_detector_gain_differences_do_not_matter(scans):
    # a scanner whose high-energy row reads at half the grey levels of the low one: judged on transmission
    s = scans[1]
    dim_high = (s.high.astype(np.float32) * 0.5).astype(np.uint16)
    assert energy_order(dim_high, s.low).verdict == "ok"
    assert energy_order(s.low, dim_high).verdict == "swapped"


def test_empty_belt_and_dark_images_are_undetermined():
    rng = np.random.default_rng(0)
    air = (60000 + rng.normal(0, 300, (400, 400))).astype(np.uint16)
    belt = energy_order(air, air[::-1].copy())  # only noise: nothing attenuates
    assert belt.verdict == "undetermined" and belt.attenuating < 256
    zeros = np.zeros((64, 64), np.uint16)
    assert energy_order(zeros, zeros).verdict == "undetermined"
    assert check_energy_order(zeros, zeros).verdict == "undetermined"  # passes, no error


def test_a_large_scan_is_sampled_not_read_whole():
    s = make_scan(np.random.default_rng(3), 1500, 1500)
    order = energy_order(s.high, s.low)
    assert order.verdict == "ok"
    assert order.attenuating <= 262_144


def test_training_split_reports_its_exchanged_images(scans, tmp_path, caplog):
    import json
    import logging

    from xscreen.model.classes import CLASS_NAMES
    from xscreen.scans import convert_scan, write_converted
    from xscreen.training.dataset import CocoDetection
    from xscreen.training.train import _warn_swapped_energies

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    images = []
    for i, s in enumerate(scans[:5]):
        high, low = (s.low, s.high) if i in (1, 3) else (s.high, s.low)  # two stored the wrong way round
        write_converted(tmp_path / "images" / "train" / f"im{i}.png", convert_scan(high, low))
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 320, "width": 320})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]
    ann = {"images": images, "annotations": [], "categories": categories}
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(ann))
    ds = CocoDetection(tmp_path, "train")
    assert ds.swapped_energy_images() == (5, ["im1.png", "im3.png"])
    assert ds.swapped_energy_images(sample=2) == (2, [])  # images 0 and 4 only
    with caplog.at_level(logging.INFO, logger="xscreen.train"):
        _warn_swapped_energies(ds)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "2 of 5 training images checked look like exchanged" in warned[0].getMessage()
    assert "im1.png, im3.png" in warned[0].getMessage()
