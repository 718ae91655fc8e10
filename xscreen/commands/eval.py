"""`xscreen eval`: COCO metrics (pycocotools) of weights, an ONNX export or a results file on a split."""

from __future__ import annotations

import json
from pathlib import Path

from xscreen.training.threshold_rules import RULES


def add_arguments(parser) -> None:
    parser.add_argument("--weights", help="detector weights (.safetensors from model.weights.save_weights)")
    parser.add_argument(
        "--onnx", help="evaluate this `xscreen export` file through ONNX Runtime instead (fp32 or int8)"
    )
    parser.add_argument("--data", required=True, help="dataset directory (annotations/, images/)")
    parser.add_argument("--split", default="test", help="split name (default test)")
    parser.add_argument("--subset", choices=["challenging"], help="evaluate only the challenging subset")
    parser.add_argument(
        "--out", help="output folder for metrics.json, metrics.md, detections.json, pr_curves/"
    )
    parser.add_argument("--detections", help="evaluate this COCO results file instead of running a model")
    parser.add_argument("--ann-file", help="annotation json (default DATA/annotations/SPLIT.json)")
    parser.add_argument("--img-dir", help="converted-image folder (default DATA/images/SPLIT)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--threshold-rule",
        choices=RULES,
        default="best-f1",
        help="also report the operating threshold this rule picks on the split (training.threshold)",
    )
    parser.add_argument(
        "--min-precision", type=float, default=0.9, help="--threshold-rule precision: target (default 0.9)"
    )


def run(args) -> int:
    from xscreen.training.evaluate import (
        EvalError,
        OnnxDetector,
        detect_dataset,
        evaluate_detections,
        metrics_markdown,
        read_json,
    )
    from xscreen.training.threshold import check_rule

    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_rule(args.threshold_rule, args.min_precision)
    given = [
        f
        for f, v in (("--weights", args.weights), ("--onnx", args.onnx), ("--detections", args.detections))
        if v
    ]
    if len(given) > 1:
        raise EvalError(f"give one of --weights, --onnx or --detections, not {' and '.join(given)}")
    if not given:
        raise EvalError(
            "--weights is required (or --onnx for an exported file, --detections for a results file)"
        )
    ann_file = (
        Path(args.ann_file) if args.ann_file else Path(args.data) / "annotations" / f"{args.split}.json"
    )
    stored = None  # the model's own operating point
    if args.detections:
        gt = ann_file
        results = read_json(args.detections, "detections file")
        metrics = evaluate_detections(gt, results, subset=args.subset, out_dir=args.out)
    else:
        from xscreen.inference.base import torch_device
        from xscreen.model.weights import load_weights
        from xscreen.training.dataset import CocoDetection

        device = torch_device(args.device)
        if args.onnx:
            model = OnnxDetector(args.onnx, device.type)
            raw = model.backend.meta.raw.get("operating_point")
            stored = json.loads(raw) if raw else None
        else:
            model, info = load_weights(args.weights, device=device)
            stored = info.operating_point
        # evaluate_model's steps, keeping the detections for the operating point
        ds = CocoDetection(
            args.data, args.split, class_names=model.cfg.class_names, ann_file=ann_file, img_dir=args.img_dir
        )
        hard = {int(im["id"]) for im in ds.images if im.get("challenging")}
        if args.subset and not hard:
            raise EvalError(f'{ds.ann_file}: no image is flagged "challenging": true')
        results = detect_dataset(
            model, ds, hard if args.subset else None, batch_size=args.batch_size, device=device, progress=True
        )
        gt = ds.coco
        metrics = evaluate_detections(gt, results, subset=args.subset, out_dir=args.out)
    print(metrics_markdown(metrics))
    _report_threshold(args, gt, results, stored)
    if args.out:
        print(f"wrote {args.out}/metrics.json, metrics.md, detections.json and pr_curves/")
    return 0


def _report_threshold(args, gt, results: list, stored: dict | None) -> None:
    """The operating point the rule picks on these detections, beside the model's stored one."""
    from xscreen.training.evaluate import check_results, read_json
    from xscreen.training.threshold import describe, pick_threshold

    gt = read_json(gt, "ground-truth annotation file")
    ids = [int(im["id"]) for im in gt["images"] if not args.subset or im.get("challenging")]
    plot = Path(args.out) / "operating_point.png" if args.out else None
    op = pick_threshold(
        gt, check_results(results, gt), args.threshold_rule, args.min_precision, ids, plot=plot
    )
    subset = f" ({args.subset} subset)" if args.subset else ""
    print(f"operating point on {args.split}{subset}: {describe(op)}")
    if args.weights or args.onnx:
        print(f"the model's stored operating point: {describe(stored)}")
