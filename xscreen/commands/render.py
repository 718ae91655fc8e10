"""Draw a scanner-style pseudo-colour picture of a raw dual-energy scan, with boxes and labels.

Orange = organic, green = inorganic / mixed, blue = metal, as on airport scanners.
Example: ``xscreen render --high s_high.png --low s_low.png --out s.png --weights w.safetensors``
"""

from __future__ import annotations

import json
from pathlib import Path

from xscreen.errors import XscreenError


class RenderError(XscreenError):
    """Bad ``xscreen render`` input (options, annotation/detection files, ids)."""


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
    import cv2

    from xscreen.model.classes import CLASS_NAMES, CLCXRAY_CLASSES
    from xscreen.scans import check_pair, read_converted, read_scan
    from xscreen.scans.picture import draw_detections, pseudo_colour, raw_from_converted

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
        from xscreen.scans import convert_scan

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
