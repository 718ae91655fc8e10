"""`xscreen threshold`: show, set or re-pick the operating score threshold stored in a weights file.

    xscreen threshold W.safetensors                          # print the stored operating point
    xscreen threshold W.safetensors --set 0.42 --out W2.safetensors
    xscreen threshold W.safetensors --data DATA [--split val] [--rule precision --min-precision 0.9]
        --out W2.safetensors [--plot pr.png]

``--set`` records a threshold chosen by hand (rule "manual"); ``--data`` runs the model on a split and
picks it with a rule of training.threshold, as training does at the end of a run. The tensors and their
sha256 are unchanged; only the header's operating point is rewritten (``--out`` may be the same file).
"""

from __future__ import annotations

import argparse

from xscreen.argtypes import unit_float
from xscreen.errors import XscreenError
from xscreen.training.threshold_rules import RULES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("weights", help="safetensors weights (xscreen format)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--set", type=unit_float, metavar="T", help="record threshold T (rule 'manual')")
    how.add_argument("--data", help="pick it on this dataset (COCO layout, as xscreen eval)")
    a("--split", default="val", help="--data: split to pick on (default val)")
    a(
        "--rule",
        choices=RULES,
        default="best-f1",
        help="--data: rule (default best-f1; best-f2 weighs recall higher)",
    )
    a("--min-precision", type=unit_float, default=0.9, help="--rule precision: target (default 0.9)")
    a("--out", help="weights file to write (may equal WEIGHTS); required with --set / --data")
    a("--plot", help="--data: write the PR curve with the chosen point to this PNG")
    a("--device", default="cpu", help="--data: torch device (default cpu)")
    a("--batch-size", type=int, default=2, help="--data: images per forward pass (default 2)")


def run(args: argparse.Namespace) -> int:
    import json

    from xscreen.model.weights import operating_point_of, read_header, set_operating_point
    from xscreen.training.threshold import describe

    if (args.set is not None or args.data) and not args.out:
        raise XscreenError("--out is required with --set or --data (give WEIGHTS itself to rewrite it)")
    if args.out and args.set is None and not args.data:
        raise XscreenError("--out needs --set T or --data DATA")
    if args.plot and not args.data:
        raise XscreenError("--plot needs --data")
    if args.set is None and not args.data:
        op = operating_point_of(read_header(args.weights), args.weights)
        print(describe(op))
        if op:
            print(json.dumps(op, indent=2, sort_keys=True))
        return 0
    op = {"score_threshold": args.set, "rule": "manual"} if args.set is not None else _pick(args)
    stored = set_operating_point(args.weights, args.out, op)
    print(f"wrote {args.out}: {describe(stored)}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _pick(args: argparse.Namespace) -> dict:
    from xscreen.inference.base import torch_device
    from xscreen.model.weights import load_weights
    from xscreen.training.dataset import CocoDetection
    from xscreen.training.evaluate import EvalError, detect_dataset
    from xscreen.training.threshold import pick_threshold

    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = torch_device(args.device)
    model, info = load_weights(args.weights, device=device)
    ds = CocoDetection(args.data, args.split, class_names=info.config.class_names)
    results = detect_dataset(model, ds, batch_size=args.batch_size, device=device)
    op = pick_threshold(
        ds.coco,
        results,
        args.rule,
        args.min_precision,
        plot=args.plot,
        title=f"{info.name}, {args.split} split",
    )
    return {**op, "split": args.split}
