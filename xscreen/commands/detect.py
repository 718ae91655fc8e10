"""Detect threats in one raw dual-energy scan offline (the service's inference without HTTP).

Prints the same JSON as ``POST /detect`` with ``--json``, writes the pseudo-colour picture with
boxes with ``--render OUT.png`` and a DICOS Threat Detection Report with ``--tdr OUT.dcm``, otherwise
prints a short table. ``--high``/``--low`` may be a DICOS DX pair (docs/dicos.md).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from xscreen.errors import XscreenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--high",
        required=True,
        help="high-energy image: 16-bit PNG, 16-bit TIFF, .npy, DICOS DX or raw uint16 (with sizes)",
    )
    a("--low", required=True, help="low-energy image, same format and size as --high")
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
    a("--json", action="store_true", help="print the /detect JSON response")
    a("--render", metavar="OUT.png", help="write the pseudo-colour picture with the detections")
    a("--tdr", metavar="OUT.dcm", help="write the detections as a DICOS Threat Detection Report")


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


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before the model is loaded."""
    if args.render:
        out = Path(args.render)
        if out.suffix.lower() != ".png":
            raise XscreenError(f"--render {out}: the picture is written as PNG, give a .png path")
        if not out.parent.exists():
            raise XscreenError(f"--render {out}: folder {out.parent} does not exist")
    if args.tdr and not Path(args.tdr).parent.exists():
        raise XscreenError(f"--tdr {args.tdr}: folder {Path(args.tdr).parent} does not exist")


def _print_table(response) -> None:
    """The short table printed without --json: one line for the scan, one per detection."""
    size, model = response.image, response.model
    print(
        f"{len(response.detections)} detection(s) in {size.width}x{size.height} scan ({model.name}, "
        f"{model.backend} {model.precision}, {model.device}, {response.timings['total']:.3f} s)"
    )
    for d in response.detections:
        b = d.box
        print(
            f"  {d.class_name:<17} {d.group:<16} {d.score:.3f}  "
            f"[{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]"
        )


def run(args: argparse.Namespace) -> int:
    from xscreen.inference.backend import make_backend
    from xscreen.inference.pipeline import detect_scans, prepare_scan, render_response_png, tdr_from_response
    from xscreen.inference.settings import load_inference_settings
    from xscreen.scans.energy import EnergiesSwappedError

    settings = load_inference_settings(
        weights=args.weights,
        device=args.device,
        backend=args.backend,
        onnx_path=args.onnx_path,
        score_threshold=args.score_threshold,
        max_pixels=args.max_pixels,
    )
    _check_outputs(args)
    t0 = time.perf_counter()
    high_bytes, low_bytes = _read(args.high, "high"), _read(args.low, "low")
    try:
        prepared = prepare_scan(
            high_bytes,
            low_bytes,
            width=args.width,
            height=args.height,
            max_pixels=settings.max_pixels,
            check_energy=settings.check_energy_order and not args.no_energy_check,
        )
    except EnergiesSwappedError as exc:  # here the check is turned off by a flag
        msg = str(exc).replace("XSCREEN_CHECK_ENERGY_ORDER=false", "--no-energy-check")
        raise XscreenError(msg) from None
    backend = make_backend(settings)
    (result,) = detect_scans(
        backend,
        [prepared],
        backend_name=settings.backend,
        threshold_setting=settings.score_threshold,
        started=t0,
    )
    response = result.response(args.scan_id or uuid.uuid4().hex)
    if args.render:
        Path(args.render).write_bytes(render_response_png(prepared, response))
    if args.tdr:
        Path(args.tdr).write_bytes(tdr_from_response(prepared, response))
    if args.json:
        print(json.dumps(response.model_dump(), indent=2))
        return 0
    _print_table(response)
    for path in (args.render, args.tdr):
        if path:
            print(f"wrote {path}")
    return 0
