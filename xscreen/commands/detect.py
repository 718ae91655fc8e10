"""Detect threats in a raw dual-energy scan, or a bag of several views, offline (the service's inference
without HTTP).

Each ``--high``/``--low`` pair is one view; repeated, the pairs (in order) are the views of one bag, run in
one model batch, with one alarm decision, as ``POST /detect`` with repeated parts. Prints the same JSON as
``POST /detect`` with ``--json`` (a ``DetectResponse`` for one view, a ``BagResponse`` for several),
writes the pseudo-colour picture with boxes with ``--render OUT.png`` (one view) and a DICOS Threat
Detection Report with ``--tdr OUT.dcm`` (one for the bag), otherwise prints a short table. ``--high``/
``--low`` may be a DICOS DX pair (docs/dicos.md).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from xscreen.argtypes import positive_int
from xscreen.errors import XscreenError

MAX_VIEWS = 8  # views in one bag unless --max-views says otherwise (the service's XSCREEN_MAX_VIEWS default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--high",
        required=True,
        action="append",
        help="high-energy image: 16-bit PNG, 16-bit TIFF, .npy, DICOS DX or raw uint16 (with sizes); "
        "repeat --high/--low for each view of a bag (paired in order)",
    )
    a("--low", required=True, action="append", help="low-energy image, same format and size as its --high")
    a(
        "--max-views",
        type=positive_int,
        default=MAX_VIEWS,
        help=f"most views (--high/--low pairs) in one bag (default {MAX_VIEWS})",
    )
    a("--width", type=int, help="raw little-endian uint16 files only: pixels per row")
    a("--height", type=int, help="raw little-endian uint16 files only: rows")
    a("--weights", help="safetensors weights (default: the bundled demo weights)")
    a("--device", choices=("auto", "cuda", "cpu"), help="inference device (default auto)")
    a("--backend", choices=("torch", "onnxruntime"), help="inference backend (default torch)")
    a("--onnx-path", help="exported .onnx model for --backend onnxruntime")
    a("--score-threshold", type=float, help="minimum score (default: the model's own threshold)")
    a("--max-pixels", type=int, help="pixels per energy image limit")
    a(
        "--no-energy-check",
        action="store_true",
        help="do not refuse a pair whose --high image is darker than --low (docs/method.md 1a)",
    )
    a("--scan-id", help="id echoed in the JSON (default: generated)")
    a("--json", action="store_true", help="print the /detect JSON response (a bag's for several views)")
    a("--render", metavar="OUT.png", help="write the pseudo-colour picture with the detections (one view)")
    a("--tdr", metavar="OUT.dcm", help="write the detections as a DICOS Threat Detection Report (the bag's)")


def _read(path: str, label: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise XscreenError(f"--{label} {path}: no such file") from None
    except IsADirectoryError:
        raise XscreenError(f"--{label} {path}: is a directory") from None
    except OSError as exc:
        raise XscreenError(f"--{label} {path}: cannot read ({exc.strerror or exc})") from None


def _views(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (high, low) paths of each view, paired in order; refused before anything is loaded."""
    highs, lows = args.high, args.low
    if len(highs) != len(lows):
        raise XscreenError(
            f"--high given {len(highs)} time(s) and --low {len(lows)} time(s): each view is one --high "
            "and one --low, paired in order"
        )
    if len(highs) > args.max_views:
        raise XscreenError(f"{len(highs)} views; a bag has at most {args.max_views} (--max-views)")
    return list(zip(highs, lows, strict=True))


def _check_outputs(args: argparse.Namespace, views: int) -> None:
    """Refuse an output path that cannot be written before the model is loaded."""
    if args.render:
        out = Path(args.render)
        if views > 1:
            raise XscreenError(f"--render draws one view; this bag has {views} (give one --high/--low pair)")
        if out.suffix.lower() != ".png":
            raise XscreenError(f"--render {out}: the picture is written as PNG, give a .png path")
        if not out.parent.exists():
            raise XscreenError(f"--render {out}: folder {out.parent} does not exist")
    if args.tdr and not Path(args.tdr).parent.exists():
        raise XscreenError(f"--tdr {args.tdr}: folder {Path(args.tdr).parent} does not exist")


def _alarm(alarm: bool) -> str:
    return "ALARM" if alarm else "CLEAR"


def _print_detections(detections) -> None:
    for d in detections:
        b = d.box
        print(
            f"  {d.class_name:<17} {d.group:<16} {d.score:.3f}  "
            f"[{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]"
        )


def _print_table(response, names: list[str]) -> None:
    """The short table printed without --json: one line for the scan (with the alarm decision), one per
    detection; for a bag, a line for the bag, then each view's line and detections."""
    from xscreen.inference.response import BagResponse

    m, seconds = response.model, response.timings["total"]
    about = f"{m.name}, {m.backend} {m.precision}, {m.device}, {seconds:.3f} s"
    if not isinstance(response, BagResponse):  # one view: a DetectResponse
        size = response.image
        n = len(response.detections)
        print(f"{n} detection(s) in {size.width}x{size.height} scan ({about}): {_alarm(response.alarm)}")
        _print_detections(response.detections)
        return
    total = sum(len(v.detections) for v in response.views)
    print(f"{_alarm(response.alarm)}: bag of {len(response.views)} views, {total} detection(s) ({about})")
    for view, name in zip(response.views, names, strict=True):
        size, n = view.image, len(view.detections)
        print(
            f"view {view.view}: {n} detection(s) in {size.width}x{size.height} scan ({name}): "
            f"{_alarm(view.alarm)}"
        )
        _print_detections(view.detections)


def run(args: argparse.Namespace) -> int:
    from xscreen.inference.backend import make_backend
    from xscreen.inference.pipeline import detect_views, prepare_views, render_response_png, tdr_from_answer
    from xscreen.inference.settings import load_inference_settings
    from xscreen.scans.energy import EnergiesSwappedError

    views = _views(args)
    settings = load_inference_settings(
        weights=args.weights,
        device=args.device,
        backend=args.backend,
        onnx_path=args.onnx_path,
        score_threshold=args.score_threshold,
        max_pixels=args.max_pixels,
    )
    _check_outputs(args, len(views))
    t0 = time.perf_counter()
    parts = [(_read(high, "high"), _read(low, "low")) for high, low in views]
    try:
        scans = prepare_views(
            parts,
            width=args.width,
            height=args.height,
            max_pixels=settings.max_pixels,
            check_energy=settings.check_energy_order and not args.no_energy_check,
        )
    except EnergiesSwappedError as exc:  # here the check is turned off by a flag
        msg = str(exc).replace("XSCREEN_CHECK_ENERGY_ORDER=false", "--no-energy-check")
        raise XscreenError(msg) from None
    del parts
    backend = make_backend(settings)
    bag = detect_views(
        backend,
        scans,
        backend_name=settings.backend,
        threshold_setting=settings.score_threshold,
        started=t0,
    )
    response = bag.answer(args.scan_id or uuid.uuid4().hex)
    if args.render:
        Path(args.render).write_bytes(render_response_png(scans[0], response))
    if args.tdr:
        Path(args.tdr).write_bytes(tdr_from_answer(scans, response))
    if args.json:
        print(json.dumps(response.model_dump(), indent=2))
        return 0
    _print_table(response, [high for high, _ in views])
    for path in (args.render, args.tdr):
        if path:
            print(f"wrote {path}")
    return 0
