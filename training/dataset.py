"""CLCXray-style COCO detection dataset (real CLCXray or the synthetic scanner's output) for torch.

Point it at the real CLCXray with ``ann_file``/``img_dir`` (see docs/data.md). Converted images are
read with ``training.scans.read_converted`` so the on-disk channel order is handled in one place.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xscreen.errors import XscreenError
from xscreen.model.classes import CLASS_NAMES, normalise_name
from xscreen.model.transform import hflip, resize_to_fit
from xscreen.scans import ScanError, read_converted
from xscreen.scans.energy import energy_order

# A box narrower or lower than this (after clipping to the image) is degenerate and skipped.
MIN_BOX_SIDE = 1.0


ENERGY_CHECK_SAMPLE = 1000  # training images checked for exchanged energies at start


class DatasetError(XscreenError):
    """Unusable dataset: missing/invalid annotation file, classes that do not match, missing image."""


class DatasetWarning(UserWarning):
    """Annotations skipped while loading (degenerate boxes)."""


def load_coco_json(path: Path) -> dict:
    """A COCO annotation file as a dict, checked for the three lists every reader here needs."""
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: COCO key {key!r} missing or not a list")
    return data


def match_categories(categories: list[dict], class_names, source: str = "annotations") -> dict[int, int]:
    """Dataset category id -> 0-based index into ``class_names``, matched by normalised name.

    Raises ``DatasetError`` listing the differences when the two sets of classes disagree.
    """
    wanted = {normalise_name(n): i for i, n in enumerate(class_names)}
    mapping: dict[int, int] = {}
    extra, seen = [], set()
    for cat in categories:
        try:
            cid, name = int(cat["id"]), str(cat["name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{source}: category entry {cat!r} needs an integer 'id' and a 'name'"
            ) from None
        key = normalise_name(name)
        if key not in wanted:
            extra.append(name)
            continue
        if key in seen:
            raise DatasetError(f"{source}: class {name!r} appears twice in the categories")
        seen.add(key)
        mapping[cid] = wanted[key]
    missing = [n for n in class_names if normalise_name(n) not in seen]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"in the json but not in the model's classes: {', '.join(map(repr, extra))}")
        if missing:
            parts.append(f"in the model's classes but not in the json: {', '.join(map(repr, missing))}")
        raise DatasetError(f"{source}: categories do not match the configured classes; " + "; ".join(parts))
    return mapping


class CocoDetection(torch.utils.data.Dataset):
    """Items ``(image, target)``: image float [3, h, w] 0..255 resized to fit ``min_size``/``max_size``;
    target ``{"boxes" [K, 4] x1y1x2y2 (resized pixels), "labels" [K] int64 (0-based into
    class_names), "image_id" int, "orig_size" (H, W)}``.

    Images without annotations are kept (empty targets); ``iscrowd`` annotations are not training
    targets; degenerate boxes are skipped and reported in one ``DatasetWarning``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        class_names=CLASS_NAMES,
        train: bool = False,
        min_size: int = 800,
        max_size: int = 1333,
        flip_prob: float = 0.5,
        ann_file: str | Path | None = None,
        img_dir: str | Path | None = None,
    ):
        root = Path(root)
        self.ann_file = Path(ann_file) if ann_file else root / "annotations" / f"{split}.json"
        self.img_dir = Path(img_dir) if img_dir else root / "images" / split
        if not self.img_dir.is_dir():
            raise DatasetError(f"image folder not found: {self.img_dir}")
        self.root, self.split = root, split
        self.class_names = tuple(class_names)
        self.train, self.min_size, self.max_size, self.flip_prob = train, min_size, max_size, flip_prob
        self.coco = load_coco_json(self.ann_file)
        self.cat_to_label = match_categories(self.coco["categories"], self.class_names, str(self.ann_file))
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        try:
            self.images = sorted(self.coco["images"], key=lambda im: int(im["id"]))
            by_id = {int(im["id"]): im for im in self.images}
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{self.ann_file}: every image needs an integer 'id'") from None
        self._boxes: dict[int, list[tuple[list[float], int]]] = {i: [] for i in by_id}
        self.num_crowd = self.num_degenerate = 0
        for ann in self.coco["annotations"]:
            try:
                image_id, cat = int(ann["image_id"]), int(ann["category_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{self.ann_file}: malformed annotation {ann.get('id', ann)!r}") from None
            if image_id not in by_id:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} refers to unknown image {image_id}"
                )
            if cat not in self.cat_to_label:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} has unknown category id {cat}"
                )
            if ann.get("iscrowd", 0):
                self.num_crowd += 1  # crowd regions are not training targets (COCO convention)
                continue
            im = by_id[image_id]
            W, H = float(im.get("width") or 1e9), float(im.get("height") or 1e9)
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
            if x2 - x1 <= MIN_BOX_SIDE or y2 - y1 <= MIN_BOX_SIDE:
                self.num_degenerate += 1
                continue
            self._boxes[image_id].append(([x1, y1, x2, y2], self.cat_to_label[cat]))
        if self.num_degenerate:
            warnings.warn(
                f"{self.ann_file}: skipped {self.num_degenerate} degenerate boxes "
                f"(width or height <= {MIN_BOX_SIDE:g} px after clipping, or outside the image)",
                DatasetWarning,
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.images)

    def swapped_energy_images(self, sample: int = ENERGY_CHECK_SAMPLE) -> tuple[int, list[str]]:
        """(images checked, file names whose channels 1 and 2 look exchanged): docs/method.md §1a on up to
        ``sample`` images spread evenly over the split (channels 1 and 2 are high/256 and low/256)."""
        picks = np.unique(np.linspace(0, len(self) - 1, min(sample, len(self))).round().astype(int))
        swapped = []
        for index in picks if len(self) else []:
            try:
                array = read_converted(self.image_path(int(index)))
            except ScanError:
                continue  # unreadable files are reported when they are loaded
            if energy_order(array[..., 0], array[..., 1]).verdict == "swapped":
                swapped.append(self.images[int(index)]["file_name"])
        return (len(picks) if len(self) else 0), swapped

    def image_path(self, index: int) -> Path:
        return self.img_dir / self.images[index]["file_name"]

    def annotations(self, index: int) -> tuple[Tensor, Tensor]:
        """Image ``index``'s boxes [K, 4] x1y1x2y2 in the file's own pixels and labels [K] (0-based)."""
        pairs = self._boxes[int(self.images[index]["id"])]
        boxes = torch.tensor([b for b, _ in pairs], dtype=torch.float32).reshape(-1, 4)
        return boxes, torch.tensor([lab for _, lab in pairs], dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        info = self.images[index]
        path = self.image_path(index)
        try:
            array = read_converted(path)  # float32 [H, W, 3], channels (high, low, ratio)
        except ScanError as exc:
            raise DatasetError(str(exc)) from None
        H, W = array.shape[:2]
        if info.get("width") and info.get("height") and (int(info["width"]), int(info["height"])) != (W, H):
            raise DatasetError(
                f"{path}: image is {W}x{H} but the annotations say {info['width']}x{info['height']}"
            )
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        pairs = self._boxes[int(info["id"])]
        boxes = torch.tensor([b for b, _ in pairs], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        labels = torch.tensor([lab for _, lab in pairs], dtype=torch.int64)
        image, boxes = resize_to_fit(image, boxes, self.min_size, self.max_size)
        if self.train and self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image, boxes = hflip(image, boxes)
        target = {"boxes": boxes, "labels": labels, "image_id": int(info["id"]), "orig_size": (H, W)}
        return image, target


def collate(batch):
    """DataLoader collate: ``(list of images, list of targets)`` (images keep their own sizes)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
