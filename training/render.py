"""Draw a scanner-style pseudo-colour picture of a raw dual-energy scan, with boxes and labels.

Orange = organic, green = inorganic / mixed, blue = metal, as on airport scanners.
Example: ``xscreen render --high s_high.png --low s_low.png --out s.png --weights w.safetensors``
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from xscreen.errors import XscreenError
from xscreen.model.classes import CLASS_NAMES, CLCXRAY_CLASSES
from xscreen.training.scans import check_pair, read_converted, read_scan


class RenderError(XscreenError):
    """Bad ``xscreen render`` input (options, annotation/detection files, ids)."""


# Material colour by the ratio of low- to high-energy attenuation, ln(T_low) / ln(T_high), which
# a dual-energy scanner reads as effective atomic number: ~1.35 organics, ~2 aluminium and ~2.3 glass
# (both green), ~6 steel (see training.synth.physics). Anchor hues (OpenCV HSV, 0..180): orange, green, blue.
_RATIO_ANCHORS = np.array([1.0, 1.5, 1.9, 2.5, 3.2], np.float32)
_HUE_ANCHORS = np.array([15.0, 15.0, 60.0, 60.0, 108.0], np.float32)
_BOX_COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def _air_level(img: np.ndarray) -> float:
    """Unattenuated beam level: a high percentile of the scan (air surrounds any bag)."""
    return max(float(np.percentile(img, 99.5)), 1.0)


def pseudo_colour(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Raw pair (uint16 [H, W]) -> uint8 RGB [H, W, 3] in the usual scanner colours.

    Hue from the low/high attenuation ratio (orange organic, green inorganic/mixed, blue metal),
    brightness from the high-energy transmission (dense objects dark), saturation rising with
    attenuation so that air stays white.
    """
    check_pair(high, low)
    t_hi = np.clip(high.astype(np.float32) / _air_level(high), 1e-4, 1.0)
    t_lo = np.clip(low.astype(np.float32) / _air_level(low), 1e-4, 1.0)
    a_hi = cv2.GaussianBlur(-np.log(t_hi), (0, 0), 1.0)
    a_lo = cv2.GaussianBlur(-np.log(t_lo), (0, 0), 1.0)
    ratio = a_lo / np.maximum(a_hi, 0.02)
    hue = np.interp(ratio, _RATIO_ANCHORS, _HUE_ANCHORS).astype(np.float32)
    sat = np.clip(a_hi * 3.5, 0.0, 1.0) * 235.0
    val = np.clip(np.exp(-0.7 * a_hi) * 1.05, 0.0, 1.0) * 255.0
    hsv = np.stack([hue, sat, val], axis=-1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def raw_from_converted(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate raw pair of a converted [H, W, 3] image (channels 1, 2 = high/256, low/256).

    For datasets that ship only converted images (CLCXray); exact up to the 8-bit quantisation.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise RenderError(f"converted image must be [H, W, 3], got shape {image.shape}")
    high = np.clip(np.rint(image[..., 0].astype(np.float64) * 256.0), 0, 65535).astype(np.uint16)
    low = np.clip(np.rint(image[..., 1].astype(np.float64) * 256.0), 0, 65535).astype(np.uint16)
    return high, low


def draw_detections(rgb, boxes, labels, scores, class_names) -> np.ndarray:
    """Boxes with 'name score' labels on a copy of an RGB uint8 image.

    ``boxes`` [K, 4] x1y1x2y2 pixels, ``labels`` [K] 0-based into ``class_names``, ``scores``
    [K] or None (ground truth: label text only).
    """
    img = np.ascontiguousarray(np.array(rgb, dtype=np.uint8, copy=True))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 400))
    font = max(0.4, min(h, w) / 1200)
    placed: list[tuple[int, int, int, int]] = []  # label rectangles already drawn
    for k, (box, lab) in enumerate(zip(boxes, labels, strict=True)):
        colour = _BOX_COLOURS[int(lab) % len(_BOX_COLOURS)]
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, thick, cv2.LINE_AA)
        name = class_names[int(lab)] if 0 <= int(lab) < len(class_names) else str(int(lab))
        text = name if scores is None else f"{name} {scores[k]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, h - 1)
        lx = max(0, min(x1, w - tw - 3))  # keep the label inside the picture
        for _ in range(len(placed)):  # step down past labels this one would cover
            rect = (lx, ty - th - base + 1, lx + tw + 2, ty + 1)
            if not any(
                a[0] < rect[2] and rect[0] < a[2] and a[1] < rect[3] and rect[1] < a[3] for a in placed
            ):
                break
            ty = min(ty + th + base + 2, h - 1)
        placed.append((lx, ty - th - base + 1, lx + tw + 2, ty + 1))
        cv2.rectangle(img, (lx, ty - th - base + 1), (lx + tw + 2, ty + 1), colour, -1)
        org = (lx + 1, ty - base + 1)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return img


# --------------------------------------------------------------------------------------------
# `xscreen render`


def add_arguments(parser) -> None:
    parser.add_argument("--high", help="high-energy raw scan (16-bit PNG/TIFF or .npy)")
    parser.add_argument("--low", help="low-energy raw scan (16-bit PNG/TIFF or .npy)")
    parser.add_argument(
        "--converted",
        help="instead of --high/--low: a converted 3-channel image (e.g. a CLCXray image); the raw pair "
        "is approximated as channel 1 x 256 and channel 2 x 256",
    )
    parser.add_argument("--out", required=True, help="output picture (.png or .jpg)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--annotations", help="COCO json: draw the ground-truth boxes of --image-id")
    src.add_argument("--detections", help="COCO results json: draw these detections (of --image-id if given)")
    src.add_argument("--weights", help="run this detector on the scan and draw its detections")
    parser.add_argument("--image-id", type=int, help="image id in --annotations / --detections")
    parser.add_argument("--score-thresh", type=float, default=0.3, help="draw detections above this (0.3)")
    parser.add_argument("--device", default="cpu", help="torch device for --weights (default cpu)")


def _json(path: str, what: str):
    p = Path(path)
    if not p.is_file():
        raise RenderError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RenderError(f"{p}: not valid JSON ({exc})") from None


def _xyxy(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def run(args) -> int:
    if args.converted and (args.high or args.low):
        raise RenderError("give either --high and --low, or --converted, not both")
    if args.converted:
        high, low = raw_from_converted(read_converted(args.converted))
    elif args.high and args.low:
        high = read_scan(args.high, name=args.high)
        low = read_scan(args.low, name=args.low)
    else:
        raise RenderError("--high and --low (raw scans) or --converted (a converted image) are required")
    check_pair(high, low)
    boxes, labels, scores, names = [], [], None, list(CLASS_NAMES)
    if args.annotations:
        if args.image_id is None:
            raise RenderError("--annotations needs --image-id (which image's boxes to draw)")
        coco = _json(args.annotations, "annotation file")
        cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        index = {c["id"]: k for k, c in enumerate(cats)}
        images = {im["id"]: im for im in coco.get("images", [])}
        if args.image_id not in images:
            raise RenderError(f"{args.annotations}: no image with id {args.image_id}")
        im = images[args.image_id]
        if (im.get("height"), im.get("width")) not in ((None, None), high.shape):
            raise RenderError(
                f"image {args.image_id} is {im['width']}x{im['height']} in the annotations "
                f"but the scan is {high.shape[1]}x{high.shape[0]}"
            )
        for a in coco.get("annotations", []):
            if a["image_id"] == args.image_id:
                boxes.append(_xyxy(a["bbox"]))
                labels.append(index[a["category_id"]])
    elif args.detections:
        dets = _json(args.detections, "detections file")
        if not isinstance(dets, list):
            raise RenderError(f"{args.detections}: expected a list of COCO results")
        ids = {c.category_id: k for k, c in enumerate(CLCXRAY_CLASSES)}
        scores = []
        for d in dets:
            if args.image_id is not None and d.get("image_id") != args.image_id:
                continue
            if float(d["score"]) < args.score_thresh:
                continue
            if d["category_id"] not in ids:
                raise RenderError(f"{args.detections}: unknown CLCXray category id {d['category_id']}")
            boxes.append(_xyxy(d["bbox"]))
            labels.append(ids[d["category_id"]])
            scores.append(float(d["score"]))
    elif args.weights:
        import torch

        from xscreen.model.weights import load_weights
        from xscreen.training.scans import convert_scan

        model, _ = load_weights(args.weights, device=args.device)
        names = list(model.cfg.class_names)
        conv = read_converted(args.converted) if args.converted else convert_scan(high, low)
        image = torch.from_numpy(conv).permute(2, 0, 1).contiguous().to(args.device)
        with torch.inference_mode():
            det = model.predict([image])[0]
        keep = det["scores"] >= args.score_thresh
        boxes = det["boxes"][keep].cpu().numpy()
        labels = det["labels"][keep].cpu().numpy()
        scores = det["scores"][keep].cpu().numpy()
    picture = draw_detections(pseudo_colour(high, low), boxes, labels, scores, names)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise RenderError(f"--out must end in .png or .jpg, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise RenderError(f"cannot write {out}")
    print(f"wrote {out} ({high.shape[1]}x{high.shape[0]}, {len(labels)} boxes)")
    return 0
