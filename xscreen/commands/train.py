"""``xscreen train``: train a detector on a COCO-layout scan set (CLCXray or synthetic); torchrun-ready."""

from __future__ import annotations

import argparse

from xscreen.argtypes import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from xscreen.training.threshold_rules import RULES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="detector config name (small_lacls, ...) or JSON path"
    )
    parser.add_argument(
        "--data", required=True, help="dataset folder (annotations/{train,val}.json + images/)"
    )
    parser.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: config, 12)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="images per process (default 2)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="data-loader workers per process")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="ImageNet ResNet weights (.pth/.safetensors) for the backbone",
    )
    parser.add_argument(
        "--init-weights",
        default=None,
        help="start from this detector's weights (an xscreen .safetensors of the same architecture): "
        "fine-tuning, a new run with its own schedule; not with --resume or --backbone-weights",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="lr for a total batch of 8 (default: config, 0.01); scaled linearly to the real batch",
    )
    parser.add_argument(
        "--clip-grad",
        type=non_negative_float,
        default=None,
        help="max gradient L2 norm (0 = off; default config)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--max-iters",
        type=positive_int,
        default=None,
        help="stop after this many iterations in total (smoke runs)",
    )
    parser.add_argument(
        "--eval-every", type=non_negative_int, default=1, help="validate every N epochs (0 = never)"
    )
    parser.add_argument("--warmup-iters", type=non_negative_int, default=None, help="default: config, 500")
    parser.add_argument(
        "--log-every", type=positive_int, default=10, help="CSV/TensorBoard row every N iterations"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threshold-rule",
        choices=RULES,
        default="best-f1",
        help="how validation picks the weights' operating score threshold: best F1 of all classes' "
        "detections (default), best F2 (recall weighs 4x precision) or the lowest threshold reaching "
        "--min-precision",
    )
    parser.add_argument(
        "--min-precision", type=positive_float, default=0.9, help="--threshold-rule precision (default 0.9)"
    )


def run(args: argparse.Namespace) -> int:
    from xscreen.training.train import TrainSettings, train

    settings = TrainSettings(
        config=args.config,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        resume=args.resume,
        backbone_weights=args.backbone_weights,
        init_weights=args.init_weights,
        lr=args.lr,
        clip_grad=args.clip_grad,
        seed=args.seed,
        max_iters=args.max_iters,
        eval_every=args.eval_every,
        warmup_iters=args.warmup_iters,
        log_every=args.log_every,
        progress=not args.no_progress,
        threshold_rule=args.threshold_rule,
        min_precision=args.min_precision,
    )
    result = train(settings)
    if result["rank"] == 0:
        best = result["best_mAP"]
        print(
            f"trained {result['iteration']} iterations ({result['epochs_done']} epochs) "
            f"in {result['seconds']:.0f} s; "
            f"best val mAP {'n/a' if best is None else f'{best:.4f}'}; weights: {result['last']}"
        )
    return 0
