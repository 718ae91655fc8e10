"""Tiny on-disk COCO scan sets and a tiny detector config for the training tests (fast on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from torch import Tensor

from xscreen.model.classes import CLCXRAY_CLASSES
from xscreen.model.config import load_config
from xscreen.model.transform import normalize, pad_batch


def tiny_config(path: Path, base: str = "small_lacls") -> Path:
    """A small_* variant shrunk to 96 px input, 64 FPN channels, 1 tower conv: a real detector, fast."""
    cfg = load_config(base).with_overrides(
        name=f"tiny_{base}", min_size=96, max_size=96, fpn_channels=64, stacked_convs=1, warmup_iters=2
    )
    path.write_text(cfg.to_json())
    return path


def write_tiny_set(root: Path, n_train: int = 8, n_val: int = 2, size: int = 96, seed: int = 0) -> Path:
    """DIR/annotations/{train,val,test}.json + DIR/images/{split}/*.png with bright boxes on a dark bag.

    Same layout as the synthetic scanner writes (COCO json, 'challenging' and 'overlap' fields).
    """
    rng = np.random.default_rng(seed)
    categories = [{"id": c.category_id, "name": c.name, "supercategory": c.group} for c in CLCXRAY_CLASSES]
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img = np.full((size, size, 3), 40, np.uint8)
            name = f"{split}_{i:03d}.png"
            for _ in range(int(rng.integers(1, 3))):
                w, h = (int(v) for v in rng.integers(16, 40, size=2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                cat = CLCXRAY_CLASSES[int(rng.integers(0, 3))]
                img[y : y + h, x : x + w] = (60 * cat.category_id) % 255
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cat.category_id,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "overlap": 0.0,
                    }
                )
            cv2.imwrite(str(root / "images" / split / name), img)
            images.append(
                {"id": i + 1, "file_name": name, "width": size, "height": size, "challenging": i % 2 == 0}
            )
        (root / "annotations").mkdir(exist_ok=True)
        coco = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


def batch_for_model(images: list[Tensor], size_divisor: int = 32) -> Tensor:
    """Normalised (ImageNet mean/std) images zero-padded into one [N, 3, H, W] batch (multiple of 32)."""
    batch, _ = pad_batch([normalize(im) for im in images], size_divisor)
    return batch
