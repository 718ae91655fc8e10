"""What one answered bag brings to the store (views, answer, model, source), checked and encoded for disk."""

from __future__ import annotations

import datetime
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xscreen.store.errors import StoreInputError

# Request ids name the bag's folder: letters, digits, '_' and '-' only, so no id is a path ('..', '/').
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_VIEWS = 16
MAX_SOURCE_LENGTH = 128


def check_request_id(request_id: object) -> str:
    """``request_id`` if it is 1-64 of [A-Za-z0-9_-]; otherwise StoreInputError (the id is not echoed)."""
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise StoreInputError("a request id must be 1-64 letters, digits, '_' or '-'")
    return request_id


@dataclass(frozen=True)
class View:
    """One view of a bag: the raw high- and low-energy images, uint16 [H, W] each, of one size."""

    high: np.ndarray
    low: np.ndarray


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class StoredDetection:
    """One detection of the answer, as the store indexes it: ``index`` counts within its view."""

    view: int
    index: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the view's pixels


def answer_detections(answer: Mapping[str, Any]) -> list[StoredDetection]:
    """The detections of a detect answer: ``answer["detections"]`` (one view), or each
    ``answer["views"][v]["detections"]`` (several); each a dict with class_name, score and box
    (x1, y1, x2, y2 keys, or a 4-list). An answer of another shape has none."""
    views = answer.get("views")
    per_view = (
        [v.get("detections") or [] for v in views if isinstance(v, Mapping)]
        if isinstance(views, list)
        else [answer.get("detections") or []]
    )
    found = []
    for v, detections in enumerate(per_view):
        for i, d in enumerate(detections if isinstance(detections, list) else []):
            box = d.get("box") if isinstance(d, Mapping) else None
            if isinstance(box, Mapping):
                box = [box.get(k) for k in ("x1", "y1", "x2", "y2")]
            try:
                coords = tuple(float(c) for c in box)
                found.append(StoredDetection(v, i, str(d["class_name"]), float(d["score"]), coords))
            except (TypeError, ValueError, KeyError):
                raise StoreInputError(f"detection {i} of view {v} has no class_name, score and box") from None
    return found


def summarise_answer(answer: Mapping[str, Any]) -> tuple[bool, tuple[str, ...], float | None]:
    """(alarm, classes, top score) of a detect answer: an alarm is a detection at or over the answer's
    ``score_threshold`` (every detection when it has none), as the audit record counts it."""
    threshold = answer.get("score_threshold")
    detections = answer_detections(answer)
    alarming = [d for d in detections if threshold is None or d.score >= float(threshold)]
    classes = tuple(sorted({d.class_name for d in alarming}))
    top = max((d.score for d in detections), default=None)
    return bool(alarming), classes, top


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class NewBag:
    """One answered bag to store, keyed by the audit record's request id.

    ``answer`` is the detect response as a JSON-able dict; ``source`` says who sent the bag (route and
    key id, or the calling AE title). ``alarm``, ``classes`` and ``top_score`` are what the live list
    shows and filters on (``summarise_answer`` gives them from an answer)."""

    request_id: str
    views: Sequence[View]
    answer: Mapping[str, Any]
    model: ModelIdentity
    source: str
    alarm: bool
    classes: Sequence[str] = ()
    top_score: float | None = None
    time: datetime.datetime = field(default_factory=_now)


@dataclass(frozen=True)
class EncodedBag:
    """A checked bag with its files' bytes, ready to be written: name -> content."""

    bag: NewBag
    files: dict[str, bytes]
    answer_json: dict[str, Any]
    detections: list[StoredDetection]
    view_sizes: list[tuple[int, int]]  # (width, height) per view

    @property
    def time_s(self) -> float:
        return self.bag.time.timestamp()


def view_file_names(index: int) -> tuple[str, str]:
    return f"view{index}_high.npy", f"view{index}_low.npy"


def _npy_bytes(image: object, what: str) -> bytes:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint16 or image.ndim != 2 or 0 in image.shape:
        raise StoreInputError(f"{what} must be a non-empty 2-D uint16 array")
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(image), allow_pickle=False)
    return out.getvalue()


def _check_fields(bag: NewBag) -> None:
    check_request_id(bag.request_id)
    if not isinstance(bag.source, str) or not 0 < len(bag.source) <= MAX_SOURCE_LENGTH:
        raise StoreInputError(f"a bag's source must be 1-{MAX_SOURCE_LENGTH} characters")
    if bag.time.tzinfo is None:
        raise StoreInputError("a bag's time must carry its time zone (UTC)")
    if bag.top_score is not None and not math.isfinite(bag.top_score):
        raise StoreInputError("a bag's top score must be a finite number")
    if not 1 <= len(bag.views) <= MAX_VIEWS:
        raise StoreInputError(f"a bag has 1-{MAX_VIEWS} views, got {len(bag.views)}")


def encode_bag(bag: NewBag) -> EncodedBag:
    """Check ``bag`` and serialise it: one .npy per energy image (lossless uint16) and ``bag.json`` (the
    answer with what the index holds), so a bag folder stands alone. StoreInputError when unfit."""
    _check_fields(bag)
    files: dict[str, bytes] = {}
    sizes = []
    for i, view in enumerate(bag.views):
        if not isinstance(view, View) or getattr(view.high, "shape", None) != getattr(view.low, "shape", 1):
            raise StoreInputError(f"view {i} needs a high and a low image of one size")
        high_name, low_name = view_file_names(i)
        files[high_name] = _npy_bytes(view.high, f"view {i} high")
        files[low_name] = _npy_bytes(view.low, f"view {i} low")
        sizes.append((int(view.high.shape[1]), int(view.high.shape[0])))
    try:
        answer = json.loads(json.dumps(bag.answer, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreInputError(f"the answer is not JSON: {exc}") from None
    detections = answer_detections(answer)
    meta = {
        "request_id": bag.request_id,
        "time": bag.time.astimezone(datetime.UTC).isoformat(),
        "source": bag.source,
        "model": {"name": bag.model.name, "version": bag.model.version, "sha256": bag.model.sha256},
        "alarm": bool(bag.alarm),
        "classes": sorted(set(bag.classes)),
        "top_score": bag.top_score,
        "views": [{"width": w, "height": h} for w, h in sizes],
        "answer": answer,
    }
    files["bag.json"] = json.dumps(meta, indent=1).encode()
    return EncodedBag(bag, files, answer, detections, sizes)
