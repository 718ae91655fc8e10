"""Draw a scanner-style pseudo-colour picture of a raw dual-energy scan, with boxes and labels.

Orange = organic, green = inorganic / mixed, blue = metal, as on airport scanners. The boxes come from
ground truth (``--annotations``), from a detections file (``--detections``: the JSON of
``xscreen detect --json`` and ``POST /detect``, or COCO results) or from a detector run here
(``--weights``, at the model's own threshold as ``xscreen detect`` and ``xscreen serve`` use it).
Example: ``xscreen render --high bag_high.png --low bag_low.png --detections bag.json --out bag.png``
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xscreen.argtypes import unit_float
from xscreen.errors import XscreenError


class RenderError(XscreenError):
    """Bad ``xscreen render`` input (options, annotation/detection files, ids)."""


@dataclass
class Boxes:
    """What gets drawn: x1y1x2y2 boxes in scan pixels, 0-based labels into ``names``, scores (None: truth)."""

    names: list[str]
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] | None = None


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
    src.add_argument("--annotations", help="COCO json: draw the ground-truth boxes of one of its images")
    src.add_argument(
        "--detections",
        help="draw these detections: the JSON of `xscreen detect --json` or POST /detect, or COCO results "
        "(a list of {image_id, category_id, bbox, score})",
    )
    src.add_argument("--weights", help="run this detector (safetensors) on the scan and draw what it finds")
    parser.add_argument(
        "--image-id",
        help="which image of --annotations or COCO --detections: its file stem (synth_000012) or its COCO "
        "image id (the json's images[].id; for `xscreen synth` data the file number + 1). Default: the "
        "image whose file name matches --high or --converted",
    )
    parser.add_argument(
        "--score-threshold",
        "--score-thresh",
        dest="score_threshold",
        type=unit_float,
        help="draw detections scoring at least this (default: with --weights the model's own threshold, "
        "as `xscreen detect` uses it; a --detections file is drawn as it is)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), help="device for --weights (default auto)"
    )


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


def _read_pair(args):
    from xscreen.scans import check_pair, read_converted, read_scan
    from xscreen.scans.picture import raw_from_converted

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
    return high, low


def _find_image(images: list[dict], wanted: str | None, args, source: str) -> dict:
    """The COCO image named by ``--image-id`` (id or file stem), else the one whose file matches the scan."""
    if wanted is not None:
        for im in images:
            stems = {Path(str(im.get(k, ""))).stem for k in ("file_name", "raw_high", "raw_low")}
            if wanted == str(im.get("id")) or wanted in stems or wanted == im.get("file_name"):
                return im
        raise RenderError(f"{source}: no image with id or file stem {wanted!r}")
    scan = Path(args.converted or args.high).name
    keys = ("file_name",) if args.converted else ("raw_high", "raw_low")
    found = [im for im in images if any(Path(str(im.get(k, ""))).name == scan for k in keys)]
    if len(found) != 1:
        raise RenderError(
            f"--annotations needs --image-id: {source} has no single image whose file is named {scan!r} "
            "(give the image's file stem, e.g. synth_000012, or its COCO id)"
        )
    return found[0]


def _ground_truth(args, size: tuple[int, int]) -> Boxes:
    coco = _json(args.annotations, "annotation file")
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(cats)}
    im = _find_image(coco.get("images", []), args.image_id, args, args.annotations)
    if (im.get("height"), im.get("width")) not in ((None, None), size):
        raise RenderError(
            f"image {im['id']} ({im.get('file_name')}) is {im['width']}x{im['height']} in the annotations "
            f"but the scan is {size[1]}x{size[0]}"
        )
    out = Boxes(names=[c["name"] for c in cats])
    for a in coco.get("annotations", []):
        if a["image_id"] == im["id"]:
            out.boxes.append(_xyxy(a["bbox"]))
            out.labels.append(index[a["category_id"]])
    return out


def _coco_results(dets: list, args) -> Boxes:
    from xscreen.model.classes import CLASS_NAMES, CLCXRAY_CLASSES

    wanted = None
    if args.image_id is not None:
        if not args.image_id.isdigit():
            raise RenderError(
                f"{args.detections}: COCO results name images by their COCO id only; give --image-id as "
                f"that number, not {args.image_id!r}"
            )
        wanted = int(args.image_id)
    elif len(ids := {d.get("image_id") for d in dets}) > 1:
        raise RenderError(
            f"{args.detections}: results of {len(ids)} images; give --image-id (the COCO image id)"
        )
    ids = {c.category_id: k for k, c in enumerate(CLCXRAY_CLASSES)}
    out = Boxes(names=list(CLASS_NAMES), scores=[])
    for d in dets:
        if wanted is not None and d.get("image_id") != wanted:
            continue
        if d["category_id"] not in ids:
            raise RenderError(f"{args.detections}: unknown CLCXray category id {d['category_id']}")
        out.boxes.append(_xyxy(d["bbox"]))
        out.labels.append(ids[d["category_id"]])
        out.scores.append(float(d["score"]))
    return out


def _detect_json(answer: dict, args, size: tuple[int, int]) -> Boxes:
    """The detections of an ``xscreen detect --json`` / ``POST /detect`` answer (DetectResponse)."""
    from xscreen.model.classes import CLASS_NAMES

    if args.image_id is not None:
        raise RenderError(f"{args.detections} holds one scan's answer: --image-id does not apply")
    image = answer.get("image") or {}
    if (image.get("height"), image.get("width")) not in ((None, None), size):
        raise RenderError(
            f"{args.detections} answers a {image['width']}x{image['height']} scan "
            f"but this scan is {size[1]}x{size[0]}"
        )
    out = Boxes(names=list(CLASS_NAMES), scores=[])
    for k, d in enumerate(answer["detections"]):
        try:
            name, score, box = str(d["class_name"]), float(d["score"]), d["box"]
            xyxy = [float(box[c]) for c in ("x1", "y1", "x2", "y2")]
        except (KeyError, TypeError, ValueError):
            raise RenderError(
                f"{args.detections}: detection {k} lacks class_name, score or box {{x1, y1, x2, y2}}"
            ) from None
        if name not in out.names:
            out.names.append(name)
        out.boxes.append(xyxy)
        out.labels.append(out.names.index(name))
        out.scores.append(score)
    return out


def _from_detections_file(args, size: tuple[int, int]) -> Boxes:
    dets = _json(args.detections, "detections file")
    if isinstance(dets, dict) and isinstance(dets.get("detections"), list):
        return _detect_json(dets, args, size)
    if isinstance(dets, list):
        return _coco_results(dets, args)
    raise RenderError(
        f"{args.detections}: expected the JSON of `xscreen detect --json` / POST /detect (an object with "
        '"detections") or a list of COCO results'
    )


def _from_model(args, high, low) -> Boxes:
    """The detector's boxes, the same way ``xscreen detect`` gets them (xscreen.inference.pipeline)."""
    from xscreen.inference.backend import make_backend
    from xscreen.inference.pipeline import detections_from_output, resolve_threshold, run_model
    from xscreen.inference.settings import load_inference_settings
    from xscreen.scans import convert_scan, read_converted

    settings = load_inference_settings(weights=args.weights, device=args.device)
    backend = make_backend(settings)
    info = backend.info
    image = read_converted(args.converted) if args.converted else convert_scan(high, low)
    (run,) = run_model(backend, [image])
    threshold = resolve_threshold(args.score_threshold, settings.score_threshold, info)
    detections = detections_from_output(run.output, info, threshold)
    names = list(info.class_names)
    return Boxes(
        names=names,
        boxes=[[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in detections],
        labels=[names.index(d.class_name) for d in detections],
        scores=[d.score for d in detections],
    )


def _above(drawn: Boxes, threshold: float | None) -> Boxes:
    if threshold is None or drawn.scores is None:
        return drawn
    keep = [k for k, s in enumerate(drawn.scores) if s >= threshold]
    return Boxes(
        names=drawn.names,
        boxes=[drawn.boxes[k] for k in keep],
        labels=[drawn.labels[k] for k in keep],
        scores=[drawn.scores[k] for k in keep],
    )


def run(args) -> int:
    import cv2
    import numpy as np

    from xscreen.model.classes import CLASS_NAMES
    from xscreen.scans.picture import draw_detections, pseudo_colour

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise RenderError(f"--out must end in .png or .jpg, got {out.name!r}")
    if args.image_id is not None and not (args.annotations or args.detections):
        raise RenderError("--image-id picks an image of --annotations or --detections; give one of them")
    high, low = _read_pair(args)
    if args.annotations:
        drawn = _ground_truth(args, high.shape)
    elif args.detections:
        drawn = _above(_from_detections_file(args, high.shape), args.score_threshold)
    elif args.weights:
        drawn = _from_model(args, high, low)
    else:
        drawn = Boxes(names=list(CLASS_NAMES))
    boxes = np.asarray(drawn.boxes, np.float64).reshape(-1, 4)
    picture = draw_detections(pseudo_colour(high, low), boxes, drawn.labels, drawn.scores, drawn.names)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise RenderError(f"cannot write {out}")
    print(f"wrote {out} ({high.shape[1]}x{high.shape[0]}, {len(drawn.labels)} boxes)")
    return 0
