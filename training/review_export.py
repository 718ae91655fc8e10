"""The scan store's reviewed bags as a training dataset: what ``xscreen export-reviews`` writes.

The layout is the synthetic scanner's (training/synth/writer.py), so ``xscreen train`` and ``xscreen eval``
read it unchanged; each view of a bag is one image::

    OUT/annotations/{train,val,test}.json          COCO ground truth: confirmed detections + drawn boxes
    OUT/annotations/{split}_false_alarms.json      COCO: the boxes reviewers marked false alarms
    OUT/images/{split}/REQUESTID_vN.png            converted 8-bit image (xscreen.scans.convert_scan)
    OUT/raw/{split}/REQUESTID_vN_high.png, _low.png   the stored 16-bit views, pixel for pixel
    OUT/export.json                                where from, the split rule, counts, bags left out

What counts (docs/training.md "Retraining on the site's reviews"): only the current verdicts. A bag is
exported when every detection of its answer has one; a bag with a detection nobody judged yet is left
out whole (named in export.json), since its unjudged box could be a threat or not, and the reviewer may
not have drawn its missed objects yet. A false alarm is no box in the ground truth: its view is a
negative there. A bag's split is a hash of its request id and the seed, so a bag keeps its split as
the store grows and a held-out bag is never trained on by a later export with the same seed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from xscreen.errors import XscreenError
from xscreen.model.classes import CLCXRAY_CLASSES, normalise_name
from xscreen.scans import convert_scan, quantise_converted
from xscreen.store import BagNotFound, ModelIdentity, ScanStore, StoredBag
from xscreen.training.synth.writer import PNG_PARAMS

SPLITS = ("train", "val", "test")  # test: the held-out reviews; val: what training validates on
MANIFEST = "export.json"
FORMAT = "xscreen-reviews/1"
FALSE_ALARMS = "{split}_false_alarms.json"
PAGE = 500  # bags per store query (the store's most)
FILE_MODE, DIR_MODE = 0o600, 0o700  # the export holds the same travellers' images as the store
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CATEGORIES = {normalise_name(c.name): c for c in CLCXRAY_CLASSES}


class ExportError(XscreenError):
    """The export cannot be made: no reviewed bag, a bad split rule, an output folder it may not use."""


@dataclass(frozen=True)
class SplitRule:
    """Which split a bag goes to: all to ``single``, or by a hash of (seed, request id): a fraction
    ``holdout`` to test, ``val`` to val, the rest to train."""

    holdout: float = 0.2
    val: float = 0.1
    seed: int = 0
    single: str | None = None

    def __post_init__(self) -> None:
        if self.single is not None and not _SPLIT_NAME.fullmatch(self.single):
            raise ExportError(f"a split name is 1-64 letters, digits, '_' or '-', got {self.single!r}")
        if not (0 <= self.holdout < 1 and 0 <= self.val < 1 and self.holdout + self.val < 1):
            raise ExportError(
                f"--holdout and --val are fractions >= 0 that leave some bags to train on "
                f"(sum < 1), got {self.holdout} and {self.val}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.single,) if self.single else SPLITS

    def split_of(self, request_id: str) -> str:
        if self.single:
            return self.single
        digest = hashlib.sha256(f"xscreen-export-reviews:{self.seed}:{request_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1), fixed by seed and id
        if u < self.holdout:
            return "test"
        return "val" if u < self.holdout + self.val else "train"

    def describe(self) -> dict:
        if self.single:
            return {"rule": "every bag", "split": self.single}
        return {"rule": "sha256 of seed and request id", "holdout": self.holdout, "val": self.val,
                "seed": self.seed}  # fmt: skip


@dataclass(frozen=True)
class LabelBox:
    """One box of the export: ground truth (confirmed, missed) or a false alarm."""

    view: int
    class_name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the view's pixels
    origin: str  # confirmed, missed, false_alarm
    verdict_id: int
    score: float | None = None  # the model's score (not for a drawn box)


@dataclass(frozen=True)
class ReviewedBag:
    request_id: str
    time: datetime.datetime
    model: ModelIdentity
    view_sizes: list[tuple[int, int]]  # (width, height) per view
    truth: list[LabelBox]
    false_alarms: list[LabelBox]


def labels_of(bag: StoredBag) -> ReviewedBag | None:
    """The bag's labels from its current verdicts; None while a detection has none (not fully reviewed).

    A confirmed detection is ground truth with the model's class and box; a drawn box (a missed object)
    is ground truth as drawn; a false alarm is no ground truth, kept apart with its box and score."""
    truth, false_alarms = [], []
    for d in bag.detections:
        if d.verdict is None:
            return None
        kind = "confirmed" if d.verdict.kind == "confirm" else "false_alarm"
        box = LabelBox(d.view, d.class_name, d.box, kind, d.verdict.id, d.score)
        (truth if kind == "confirmed" else false_alarms).append(box)
    truth += [LabelBox(m.view, m.class_name, m.box, "missed", m.id) for m in bag.missed]
    s = bag.summary
    return ReviewedBag(s.request_id, s.time, s.model, list(bag.view_sizes), truth, false_alarms)


@dataclass
class Selection:
    bags: list[ReviewedBag]  # oldest first
    stored: int = 0  # bags in the time window
    partial: list[str] = field(default_factory=list)  # reviewed, with a detection not judged yet
    vanished: list[str] = field(default_factory=list)  # evicted or purged while exporting


def select_bags(store: ScanStore, since=None, until=None) -> Selection:
    """The store's fully reviewed bags with time in [since, until), every page of the live list read."""
    chosen = Selection([])
    before = None
    while True:
        page = store.recent_bags(PAGE, before=before).bags
        for summary in page:
            if (since and summary.time < since) or (until and summary.time >= until):
                continue
            chosen.stored += 1
            if not summary.reviewed:
                continue
            try:
                labels = labels_of(store.get_bag(summary.request_id))
            except BagNotFound:
                chosen.vanished.append(summary.request_id)
                continue
            if labels is None:
                chosen.partial.append(summary.request_id)
            else:
                chosen.bags.append(labels)
        if len(page) < PAGE:
            break
        before = page[-1].seq
    chosen.bags.sort(key=lambda b: (b.time, b.request_id))
    chosen.partial.sort()
    return chosen


def _category(name: str, request_id: str) -> int:
    found = _CATEGORIES.get(normalise_name(name))
    if found is None:
        raise ExportError(
            f"bag {request_id}: class {name!r} is not one of the CLCXray classes the export writes"
        )
    return found.category_id


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_png(path: Path, image, params: list[int]) -> None:
    ok, data = cv2.imencode(".png", image, params)
    if not ok:
        raise ExportError(f"{path}: cannot encode the image as PNG")
    _write_file(path, data.tobytes())


class DatasetWriter:
    """Writes the bags' views and keeps each split's COCO lists; ``finish`` writes the json files."""

    def __init__(self, root: Path, rule: SplitRule):
        self.root, self.rule = root, rule
        self.images: dict[str, list[dict]] = {s: [] for s in rule.names}
        self.truth: dict[str, list[dict]] = {s: [] for s in rule.names}
        self.false_alarms: dict[str, list[dict]] = {s: [] for s in rule.names}
        self.bags: dict[str, int] = dict.fromkeys(rule.names, 0)
        self.models: dict[tuple[str, str, str], int] = {}
        self.next_image_id = 1  # unique over the splits, as the synthetic scanner numbers them
        for split in rule.names:
            for sub in ("images", "raw"):
                (root / sub).mkdir(DIR_MODE, exist_ok=True)
                (root / sub / split).mkdir(DIR_MODE)
        (root / "annotations").mkdir(DIR_MODE)

    def add(self, store: ScanStore, bag: ReviewedBag) -> bool:
        """Write one bag's views; False when the store no longer has it (evicted meanwhile)."""
        try:
            views = [store.view(bag.request_id, i) for i in range(len(bag.view_sizes))]
        except BagNotFound:
            return False
        split = self.rule.split_of(bag.request_id)
        ids = []
        for i, view in enumerate(views):
            stem = f"{bag.request_id}_v{i}"
            _write_png(self.root / "raw" / split / f"{stem}_high.png", view.high, PNG_PARAMS["raw"])
            _write_png(self.root / "raw" / split / f"{stem}_low.png", view.low, PNG_PARAMS["raw"])
            converted = quantise_converted(convert_scan(view.high, view.low))  # docs/method.md §1
            bgr = cv2.cvtColor(converted, cv2.COLOR_RGB2BGR)  # as training.scans.write_converted
            _write_png(self.root / "images" / split / f"{stem}.png", bgr, PNG_PARAMS["converted"])
            ids.append(self._image(split, bag, i, stem, view.high.shape))
        for boxes, found in ((bag.truth, self.truth[split]), (bag.false_alarms, self.false_alarms[split])):
            found += [self._annotation(len(found) + i + 1, ids[b.view], b, bag) for i, b in enumerate(boxes)]
        self.bags[split] += 1
        key = (bag.model.name, bag.model.version, bag.model.sha256)
        self.models[key] = self.models.get(key, 0) + 1
        return True

    def _image(self, split: str, bag: ReviewedBag, view: int, stem: str, shape) -> int:
        image_id, self.next_image_id = self.next_image_id, self.next_image_id + 1
        self.images[split].append({
            "id": image_id, "file_name": f"{stem}.png", "height": int(shape[0]), "width": int(shape[1]),
            "raw_high": f"raw/{split}/{stem}_high.png", "raw_low": f"raw/{split}/{stem}_low.png",
            "request_id": bag.request_id, "view": view, "time": bag.time.isoformat(),
            "model": {"name": bag.model.name, "version": bag.model.version, "sha256": bag.model.sha256},
        })  # fmt: skip
        return image_id

    def _annotation(self, ann_id: int, image_id: int, box: LabelBox, bag: ReviewedBag) -> dict:
        width, height = bag.view_sizes[box.view]
        x1, y1 = min(max(box.box[0], 0.0), width), min(max(box.box[1], 0.0), height)
        x2, y2 = min(max(box.box[2], 0.0), width), min(max(box.box[3], 0.0), height)
        ann = {
            "id": ann_id, "image_id": image_id, "category_id": _category(box.class_name, bag.request_id),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            "origin": box.origin, "verdict_id": box.verdict_id,
        }  # fmt: skip
        if box.score is not None:
            ann["score"] = box.score
        return ann

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {
                "bags": self.bags[split],
                "images": len(self.images[split]),
                "confirmed": sum(a["origin"] == "confirmed" for a in self.truth[split]),
                "missed": sum(a["origin"] == "missed" for a in self.truth[split]),
                "false_alarms": len(self.false_alarms[split]),
            }
            for split in self.rule.names
        }

    def finish(self, info: dict) -> None:
        categories = [
            {"id": c.category_id, "name": c.name, "supercategory": c.group} for c in CLCXRAY_CLASSES
        ]
        for split in self.rule.names:
            for name, anns in (
                (f"{split}.json", self.truth),
                (FALSE_ALARMS.format(split=split), self.false_alarms),
            ):
                coco = {"info": info, "images": self.images[split], "annotations": anns[split],
                        "categories": categories}  # fmt: skip
                _write_file(self.root / "annotations" / name, json.dumps(coco).encode())


def check_out_dir(out: Path, force: bool) -> None:
    """``out`` is new, empty, or (with ``force``) an earlier export; ExportError otherwise."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"--out {out} exists and is not empty (--force replaces an earlier export)")
        if not (out / MANIFEST).is_file():
            raise ExportError(
                f"--out {out} is not an earlier export (it has no {MANIFEST}); not replacing it"
            )


def _temp_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # mode 0700
    except OSError as exc:
        raise ExportError(f"cannot write the export beside --out {out}: {exc.strerror or exc}") from None


def _put_in_place(temp: Path, out: Path) -> None:
    """Rename the finished export to ``out``; an earlier one there goes only once the new one is in."""
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    try:
        if out.exists():
            os.rename(out, old)
        os.rename(temp, out)
    except OSError as exc:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise ExportError(f"cannot put the export in place at --out {out}: {exc.strerror or exc}") from None
    shutil.rmtree(old, ignore_errors=True)


def export_reviews(
    store: ScanStore, out: Path, rule: SplitRule, *, since=None, until=None, force: bool = False
) -> dict:
    """Write the store's fully reviewed bags to ``out`` (built beside it, then renamed into place); the
    manifest written as ``out/export.json``. ExportError, before anything is written, when none is."""
    out = Path(out)
    check_out_dir(out, force)
    chosen = select_bags(store, since, until)
    if not chosen.bags:
        raise ExportError(_nothing_to_export(chosen, since, until))
    temp = _temp_dir(out)
    try:
        writer = DatasetWriter(temp, rule)
        for bag in chosen.bags:
            if not writer.add(store, bag):
                chosen.vanished.append(bag.request_id)
        if writer.next_image_id == 1:
            raise ExportError("every reviewed bag was evicted or purged from the store during the export")
        manifest = _manifest(store, rule, chosen, writer, since, until)
        writer.finish(
            {"description": "xscreen site reviews", **{k: manifest[k] for k in ("exported", "split")}}
        )
        _write_file(temp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _put_in_place(temp, out)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise ExportError(f"cannot write the export: {exc}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return manifest


def _nothing_to_export(chosen: Selection, since, until) -> str:
    window = "" if since is None and until is None else " in the time window"
    if chosen.partial:
        return (
            f"no fully reviewed bag{window}: {len(chosen.partial)} reviewed bags still have detections "
            "without a verdict (every detection needs confirm or false alarm)"
        )
    return f"no reviewed bag to export{window}: {chosen.stored} bags stored, none has a verdict"


def _manifest(
    store: ScanStore, rule: SplitRule, chosen: Selection, writer: DatasetWriter, since, until
) -> dict:
    from xscreen.store.config import redacted_url

    return {
        "format": FORMAT,
        "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "store": str(store.config.store_dir),
        "index": redacted_url(store.config.url),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "split": rule.describe(),
        "ground_truth": "confirmed detections and drawn boxes (current verdicts); false alarms are no "
        "ground truth, listed in annotations/SPLIT_false_alarms.json",
        "counts": writer.counts(),
        "models": [
            {"name": n, "version": v, "sha256": s, "bags": k} for (n, v, s), k in writer.models.items()
        ],
        "left_out": {"not_fully_reviewed": chosen.partial, "gone_from_store": sorted(chosen.vanished)},
    }
