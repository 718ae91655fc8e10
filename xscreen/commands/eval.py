"""`xscreen eval`: COCO metrics (pycocotools) of weights, an ONNX export or a results file on a split."""

from __future__ import annotations

from pathlib import Path


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


def run(args) -> int:
    from xscreen.training.evaluate import (
        EvalError,
        OnnxDetector,
        evaluate_detections,
        evaluate_model,
        metrics_markdown,
    )

    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {args.batch_size}")
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
    if args.detections:
        metrics = evaluate_detections(ann_file, args.detections, subset=args.subset, out_dir=args.out)
    else:
        import torch

        from xscreen.model.weights import load_weights

        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise EvalError(f"--device {args.device!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EvalError(f"--device {args.device}: CUDA is not available on this machine")
        if args.onnx:
            model = OnnxDetector(args.onnx, device.type)
        else:
            model, _ = load_weights(args.weights, device=device)
        metrics = evaluate_model(
            model,
            args.data,
            args.split,
            subset=args.subset,
            batch_size=args.batch_size,
            device=device,
            out_dir=args.out,
            ann_file=ann_file,
            img_dir=args.img_dir,
            progress=True,
        )
    print(metrics_markdown(metrics))
    if args.out:
        print(f"wrote {args.out}/metrics.json, metrics.md, detections.json and pr_curves/")
    return 0
