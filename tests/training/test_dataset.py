"""COCO loader on a tiny hand-written dataset: class mapping, edge cases, transforms, workers, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support.train_data import batch_for_model
from xscreen.model.classes import CLASS_NAMES
from xscreen.model.transform import PIXEL_MEAN, PIXEL_STD
from xscreen.scans import convert_scan, write_converted
from xscreen.training.dataset import CocoDetection, DatasetError, DatasetWarning, collate

RNG = np.random.default_rng(5)
# The dataset's own ids and spellings, deliberately different from model.classes (matched by name).
JSON_NAMES = ["Blade", "Dagger", "Knife", "Scissors", "Tin", "Cans", "CartonDrinks", "GlassBottle",
              "PlasticBottle", "VacuumCup", "SprayCans", "SwissArmyKnife"]  # fmt: skip
CATEGORIES = [{"id": 100 + 7 * k, "name": n} for k, n in enumerate(reversed(JSON_NAMES))]
CAT = {c["name"]: c["id"] for c in CATEGORIES}


def _pair(h, w):
    high = RNG.integers(3000, 65000, size=(h, w), dtype=np.uint16)
    low = RNG.integers(0, 65000, size=(h, w), dtype=np.uint16)
    return high, low


@pytest.fixture()
def tiny(tmp_path):
    """3 images: one with a normal + crowd + 2 degenerate + 1 clipped box, one empty, one with 2 boxes."""
    img_dir = tmp_path / "images" / "val"
    img_dir.mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    sizes = {1: (40, 64), 2: (48, 48), 3: (36, 50)}
    raws = {}
    for i, (h, w) in sizes.items():
        raws[i] = _pair(h, w)
        write_converted(img_dir / f"im{i}.png", convert_scan(*raws[i]))
    anns = [
        {"id": 1, "image_id": 1, "category_id": CAT["Knife"], "bbox": [10, 5, 20, 12], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": CAT["Tin"], "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": CAT["Blade"], "bbox": [3, 3, 0.5, 10], "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": CAT["Blade"], "bbox": [70, 3, 10, 10], "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": CAT["SwissArmyKnife"], "bbox": [50, 30, 30, 20]},
        {"id": 6, "image_id": 3, "category_id": CAT["GlassBottle"], "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 7, "image_id": 3, "category_id": CAT["Cans"], "bbox": [20, 10, 25, 20], "iscrowd": 0},
    ]
    images = [{"id": i, "file_name": f"im{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()]
    ann = {"images": images[::-1], "annotations": anns, "categories": CATEGORIES}
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(ann))
    return tmp_path, raws


def _load(root, **kw):
    with pytest.warns(DatasetWarning, match="skipped 2 degenerate boxes"):
        return CocoDetection(root, "val", **kw)


def test_items_labels_and_edge_cases(tiny):
    root, _ = tiny
    ds = _load(root, min_size=40, max_size=64)
    assert len(ds) == 3 and ds.num_crowd == 1 and ds.num_degenerate == 2
    assert [im["id"] for im in ds.images] == [1, 2, 3]
    image, t = ds[0]
    assert image.shape == (3, 40, 64) and image.dtype == torch.float32  # fits already: not resized
    assert t["image_id"] == 1 and t["orig_size"] == (40, 64)
    # knife kept; crowd tin excluded; 0.5 px blade and the blade outside the image skipped;
    # the swiss army knife box clipped to the image (50..64 x 30..40).
    assert t["labels"].tolist() == [CLASS_NAMES.index("knife"), CLASS_NAMES.index("swiss army knife")]
    assert t["boxes"].tolist() == [[10, 5, 30, 17], [50, 30, 64, 40]]
    empty_img, empty = ds[1]
    assert empty_img.shape == (3, 40, 40) and empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert ds.label_to_cat[CLASS_NAMES.index("glass bottle")] == CAT["GlassBottle"]


def test_round_trip_raw_pair_to_file_to_tensor(tiny):
    root, raws = tiny
    for index, image_id in enumerate((1, 2, 3)):
        h, w = raws[image_id][0].shape
        loaded, _ = _load(root, min_size=min(h, w), max_size=max(h, w))[index]  # fits already: no resize
        direct = torch.from_numpy(convert_scan(*raws[image_id])).permute(2, 0, 1)
        assert loaded.shape == direct.shape
        ok = direct <= 255.5  # 8-bit storage: rounding to nearest (high/256 above 255.5 stored as 255)
        assert (loaded - direct).abs()[ok].max().item() <= 0.5 + 1e-4
        assert (loaded[~ok] == 255).all()


def test_resize_and_flip(tiny):
    root, _ = tiny
    ds = _load(root, min_size=80, max_size=200, train=True, flip_prob=1.0)
    image, t = ds[0]  # 40x64 -> scale 2 -> 80x128, then flipped
    assert image.shape == (3, 80, 128) and t["orig_size"] == (40, 64)
    assert torch.allclose(t["boxes"][0], torch.tensor([128 - 60.0, 10, 128 - 20.0, 34]))
    plain = _load(root, min_size=80, max_size=200, train=False, flip_prob=1.0)[0][0]
    assert torch.equal(image, plain.flip(-1))


def test_dataloader_with_two_workers_and_batching(tiny):
    root, _ = tiny
    ds = _load(root, min_size=36, max_size=64)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    index_of = {im["id"]: k for k, im in enumerate(ds.images)}
    seen = []
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list)
        batch = batch_for_model(images)
        assert batch.shape[0] == len(images) and batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
        h, w = images[0].shape[1:]
        mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
        assert torch.allclose(batch[0, :, :h, :w], (images[0] - mean) / std, atol=1e-5)
        assert (batch[0, :, h:, :] == 0).all()
        seen += [t["image_id"] for t in targets]
        for im, t in zip(images, targets, strict=True):
            assert torch.equal(im, ds[index_of[t["image_id"]]][0])  # workers give the same tensors
    assert seen == [1, 2, 3]


def test_mismatched_classes_are_listed(tiny):
    root, _ = tiny
    ann = json.loads((root / "annotations" / "val.json").read_text())
    ann["categories"][0]["name"] = "Hammer"  # replaces "SwissArmyKnife"
    (root / "annotations" / "val.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError) as err:
        CocoDetection(root, "val")
    msg = str(err.value)
    assert "in the json but not in the model's classes: 'Hammer'" in msg
    assert "in the model's classes but not in the json: 'swiss army knife'" in msg


def test_overrides_and_bad_inputs(tiny, tmp_path):
    root, _ = tiny
    ds = _load(
        tmp_path / "elsewhere", ann_file=root / "annotations" / "val.json", img_dir=root / "images" / "val"
    )
    assert len(ds) == 3
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDetection(root, "val", ann_file=root / "nope.json")
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoDetection(root, "train")
    (root / "annotations" / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDetection(root, "val", ann_file=root / "annotations" / "bad.json")
    (root / "images" / "val" / "im2.png").unlink()
    with pytest.raises(DatasetError, match="im2.png: no such image file"):
        ds[1]
