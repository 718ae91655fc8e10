"""`xscreen la-experiment`: ATSS vs its LA variants on an overlap-heavy synthetic set."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from xscreen.training.la_experiment import (
    evaluate_one,
    format_tables,
    format_weight_table,
    la_weights_one,
    make_dataset,
    parse_overrides,
    parse_variant,
    run_name,
    train_one,
    variant_config,
)

log = logging.getLogger("xscreen.la_experiment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/la_experiment", help="experiment folder (data, runs, tables)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["small_atss", "small_lacls"],
        help="detector configs, each NAME or NAME@KEY=VALUE[@KEY=VALUE...] (per-variant overrides), "
        "e.g. small_lacls_release@la_coeffs=[1,0,0]",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--data", default=None, help="use this synthetic set (e.g. another experiment's OUT/data) as it is"
    )
    parser.add_argument("--train-images", type=int, default=3000, help="synthetic training scans")
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--test-images", type=int, default=600)
    parser.add_argument("--data-seed", type=int, default=2022)
    parser.add_argument("--scan-size", default="640x640", help="synthetic scan WIDTHxHEIGHT")
    parser.add_argument("--overlap", default="high", help="xscreen synth --overlap (default high: 0.6)")
    parser.add_argument("--synth-workers", type=int, default=2)
    parser.add_argument("--synth-args", default="", help="extra flags for xscreen synth")
    parser.add_argument(
        "--input-size", type=int, default=None, help="set min_size = max_size of every variant (reduced runs)"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every variant (investigations), e.g. frozen_stages=-1 la_coeffs=[1,1,0]",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--lr", type=float, default=None, help="lr for batch 8 (default: the config's 0.01)")
    parser.add_argument("--warmup-iters", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--weight-images", type=int, default=20, help="test scans for the LA-weight statistics (0: none)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    args.device_resolved = (
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    overrides = parse_overrides(args.set)
    configs = {}
    for spec in args.variants:  # every spec checked before any work
        name, own = parse_variant(spec)
        configs[spec] = variant_config(name, out, args.input_size, {**overrides, **own})
    data = make_dataset(out, args)
    results: dict[str, dict[int, dict]] = {}
    weight_stats: dict[str, dict[int, list | None]] = {}
    for seed in args.seeds:  # seed-major: a partial experiment still has every variant for the first seeds
        for config in args.variants:
            run_dir = out / "runs" / f"{run_name(config)}_seed{seed}"
            weights = train_one(data, run_dir, configs[config], seed, args)
            results.setdefault(config, {})[seed] = evaluate_one(weights, data, run_dir, args)
            if args.weight_images > 0:
                weight_stats.setdefault(config, {})[seed] = la_weights_one(
                    weights, data, run_dir, args.weight_images
                )
            log.info("%s seed %d: test %s", config, seed, results[config][seed]["test"])
    seeds = [s for s in args.seeds if all(s in r for r in results.values())]
    tables = format_tables(results, seeds)
    if weight_stats:
        tables += "\n" + format_weight_table(weight_stats, args.weight_images)
    command = shlex.join(["xscreen", *sys.argv[1:]])  # argv[1] is the subcommand itself
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if weight_stats:
        (out / "la_weights.json").write_text(json.dumps(weight_stats, indent=2) + "\n")
    (out / "tables.md").write_text(f"Command: `{command}`\n\n{tables}")
    print(tables)
    print(
        f"({len(seeds)} seeds x {len(results)} variants, {time.time() - t0:.0f} s; "
        f"tables in {out / 'tables.md'})"
    )
    return 0
