"""Synthetic scanner: physics, determinism, tight boxes, overlap shares, challenging flag, CLI and errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from xscreen.cli import main
from xscreen.model.classes import CATEGORY_IDS, CLASS_NAMES
from xscreen.scans import read_converted, read_scan
from xscreen.training.synth.physics import COEF, expose
from xscreen.training.synth.scene import MASK_DEPTH, is_challenging, make_scan, measure
from xscreen.training.synth.writer import SynthConfig, split_of_images, write_dataset

SMALL = {"height": 160, "width": 192}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- physics -------------------------------------------------------------------------------------


def test_high_low_ratio_separates_materials():
    """ln(T_low)/ln(T_high) of a uniform slab = ratio of the material's mu at the two energies."""
    rng = np.random.default_rng(0)
    slabs = {"organic": 6.0, "aluminium": 1.0, "steel": 0.3}
    ratios = {}
    for material, cm in slabs.items():
        depth = np.zeros((64, 64, 2), np.float32)
        depth[:, 32:] = COEF[material] * cm
        high, low = expose(depth, rng)
        air_h, air_l = high[:, :32].mean(), low[:, :32].mean()
        assert 55000 < air_l < 65535 and 55000 < air_h < 65535  # air near the top of 16 bits
        t_h, t_l = high[8:-8, 40:-8].mean() / air_h, low[8:-8, 40:-8].mean() / air_l
        assert t_h == pytest.approx(np.exp(-COEF[material][1] * cm), rel=0.02)  # Beer-Lambert
        ratios[material] = np.log(t_l) / np.log(t_h)
    assert ratios["organic"] == pytest.approx(0.206 / 0.151, rel=0.05)
    assert ratios["aluminium"] == pytest.approx(0.278 / 0.138, rel=0.05)
    assert ratios["steel"] == pytest.approx(1.205 / 0.196, rel=0.08)
    assert ratios["organic"] < 1.5 < ratios["aluminium"] < 2.5 < ratios["steel"]


def test_photon_noise_scales_like_poisson():
    rng = np.random.default_rng(1)
    depth = np.zeros((200, 200, 2), np.float32)
    depth[:, 100:] = 2.0  # transmission e^-2: ~7.4x fewer photons -> relative noise ~2.7x larger
    high, _ = expose(depth, rng)
    rel_air = high[:, :90].std() / high[:, :90].mean()
    rel_obj = high[:, 110:].std() / high[:, 110:].mean()
    assert 2.0 < rel_obj / rel_air < 3.4


# --- scenes --------------------------------------------------------------------------------------


def test_boxes_are_tight_around_each_objects_mask():
    seen = 0
    for seed in range(6):
        scan = make_scan(np.random.default_rng(seed), 256, 256, 0.5, 0.3)
        assert scan.high.dtype == np.uint16 and scan.high.shape == (256, 256)
        for o in scan.objects:
            y, x = o.origin
            x1, y1, x2, y2 = o.box
            rows, cols = np.nonzero(o.mask)
            assert (x1, y1, x2, y2) == (
                x + cols.min(),
                y + rows.min(),
                x + cols.max() + 1,
                y + rows.max() + 1,
            )
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
            assert o.area == o.mask.sum() and 0 <= o.overlap_objects <= o.overlap <= 1
            seen += 1
    assert seen >= 6


def test_overlap_shares_and_challenging_flag_on_a_hand_made_layout():
    owners = np.zeros((20, 20), np.uint8)
    clutter = np.zeros((20, 20), bool)
    similar = np.zeros((20, 20), bool)
    a = np.ones((10, 10), bool)  # object A at (0, 0), 100 px
    b = np.ones((10, 10), bool)  # object B at (0, 7): shares 3 columns (30 px) with A
    owners[0:10, 0:10] += 1
    owners[0:10, 7:17] += 1
    similar[5:10, 0:4] = True  # similar-looking clutter over 5x4 = 20 px of A, none of B
    clutter |= similar
    clutter[0:2, 15:20] = True  # a cable over B's columns 15-16, rows 0-1: 4 px of B
    oa = measure("knife", a, 0, 0, owners, clutter, similar)
    ob = measure("cans", b, 0, 7, owners, clutter, similar)
    assert oa.box == (0.0, 0.0, 10.0, 10.0) and ob.box == (7.0, 0.0, 17.0, 10.0)
    assert oa.overlap_objects == pytest.approx(0.30) and ob.overlap_objects == pytest.approx(0.30)
    assert oa.overlap_similar == pytest.approx(0.20) and oa.overlap == pytest.approx(0.50)
    assert ob.overlap_similar == 0.0 and ob.overlap == pytest.approx(0.34)
    assert is_challenging([oa]) and is_challenging([ob])  # 30 % >= 20 %
    lone = measure(
        "tin", a, 10, 10, np.pad(np.ones((10, 10), np.uint8), ((10, 0), (10, 0))), clutter, similar
    )
    assert lone.overlap == 0.0 and not is_challenging([lone])


def test_overlap_rate_controls_object_overlap():
    def mean_overlap(rate):
        vals = [
            o.overlap_objects
            for seed in range(25)
            for o in make_scan(np.random.default_rng(seed), 192, 192, rate, 0.0).objects
        ]
        return float(np.mean(vals))

    assert mean_overlap(0.9) > mean_overlap(0.0) + 0.1


def test_splits_counts_and_determinism():
    names = split_of_images(20, (0.7, 0.15, 0.15), seed=3)
    assert [names.count(s) for s in ("train", "val", "test")] == [14, 3, 3]
    assert names == split_of_images(20, (0.7, 0.15, 0.15), seed=3)


def test_dataset_is_deterministic_per_seed_with_and_without_workers(tmp_path):
    cfg = SynthConfig(images=6, seed=7, **SMALL)
    write_dataset(cfg, tmp_path / "a", workers=1, progress=False)
    write_dataset(cfg, tmp_path / "b", workers=2, progress=False)
    write_dataset(SynthConfig(images=6, seed=8, **SMALL), tmp_path / "c", workers=1, progress=False)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(da) == 6 * 3 + 3 and da == db  # identical bytes, whatever the worker count
    assert da != dc


# --- CLI -----------------------------------------------------------------------------------------


def test_synth_cli_writes_a_coco_dataset_with_16bit_raw_pairs(tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(
        ["synth", "--out", str(out), "--images", "8", "--seed", "1", "--size", "192x160", "--no-progress"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "wrote 8 scans (192x160)" in text and "train" in text
    total = 0
    for split in ("train", "val", "test"):
        coco = COCO(str(out / "annotations" / f"{split}.json"))
        assert sorted(coco.getCatIds()) == sorted(CATEGORY_IDS)
        assert [coco.cats[i]["name"] for i in CATEGORY_IDS] == list(CLASS_NAMES)
        for img in coco.dataset["images"]:
            total += 1
            assert isinstance(img["challenging"], bool) and (img["width"], img["height"]) == (192, 160)
            stem = img["file_name"][:-4]
            high = read_scan(out / "raw" / split / f"{stem}_high.png")
            low = read_scan(out / "raw" / split / f"{stem}_low.png")
            assert high.dtype == low.dtype == np.uint16 and high.shape == (160, 192)
            conv = read_converted(out / "images" / split / img["file_name"])
            assert conv.shape == (160, 192, 3)
            assert np.abs(conv[..., 0] - np.clip(high / 256.0, 0, 255)).max() <= 0.5 + 1e-3
            for ann in coco.imgToAnns[img["id"]]:
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 192 and y + h <= 160
                assert 0.0 <= ann["overlap"] <= 1.0 and ann["iscrowd"] == 0 and ann["area"] <= w * h
    assert total == 8
    info = json.loads((out / "annotations" / "train.json").read_text())["info"]
    assert info["mask_optical_depth"] == MASK_DEPTH


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--images", "0"], "--images must be at least 1, got 0"),
        (["--images", "2", "--size", "64x64"], "--size must be between 128 and 8192"),
        (["--images", "2", "--overlap", "lots"], "--overlap must be low, medium, high or a number"),
        (["--images", "2", "--overlap", "1.5"], "--overlap rate must be within 0..1"),
        (["--images", "2", "--similar-clutter", "-1"], "--similar-clutter must be within 0..1"),
        (["--images", "2", "--splits", "0.5,0.5"], "--splits must be three non-negative fractions"),
        (["--images", "2", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_synth_cli_rejects_bad_flags(tmp_path, capsys, extra, message):
    assert main(["synth", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert f"xscreen synth: error: {message}" in err and "Traceback" not in err


def test_synth_cli_rejects_bad_output_dirs(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert main(["synth", "--out", str(full), "--images", "1"]) == 2
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["synth", "--out", str(afile), "--images", "1"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["synth", "--out", str(afile / "sub"), "--images", "1"]) == 2
    assert "is not writable" in capsys.readouterr().err
    # --overwrite replaces an earlier synthetic dataset (no stale scans) and keeps other files
    args = ["synth", "--out", str(full), "--size", "128x128", "--seed", "2", "--no-progress", "--overwrite"]
    assert main([*args, "--images", "4", "--splits", "1,0,0"]) == 0
    assert main([*args, "--images", "2", "--splits", "1,0,0"]) == 0
    assert "removed 15 files of an earlier synthetic dataset" in capsys.readouterr().out  # 4 x 3 + 3 json
    assert len(list(full.rglob("*.png"))) == 6 and (full / "keep.txt").is_file()
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "y"), "--images", "1", "--size", "big"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err


def test_fast_png_stores_the_same_pixels(tmp_path):
    write_dataset(SynthConfig(images=2, seed=5, **SMALL), tmp_path / "z", progress=False)
    write_dataset(SynthConfig(images=2, seed=5, fast_png=True, **SMALL), tmp_path / "f", progress=False)
    files = sorted(p.relative_to(tmp_path / "z") for p in (tmp_path / "z").rglob("*.png"))
    assert len(files) == 6
    for rel in files:
        a, b = (tmp_path / "z" / rel), (tmp_path / "f" / rel)
        assert b.stat().st_size > a.stat().st_size  # uncompressed
        flag = -1  # IMREAD_UNCHANGED: 16-bit stays 16-bit
        assert np.array_equal(cv2.imread(str(a), flag), cv2.imread(str(b), flag))
