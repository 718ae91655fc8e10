"""The LA experiment: ATSS vs ATSS+LAcls (vs ATSS+LAreg) on a synthetic overlap-heavy set, 3 seeds.

Makes one synthetic data set with ``xscreen synth`` (kept across re-runs), trains every variant
with identical settings for every seed through the real ``xscreen train`` code path, evaluates the
last weights on the test split and on its challenging subset with training.evaluate, and prints
mean +/- std tables in the form of the paper's Tables III and VIII (COCO AP in %).

``python -m training.la_experiment --out runs/la`` (``make la-experiment``). Size knobs
(``--train-images``, ``--epochs``, ...) let the full-size run (a few thousand scans, 12 epochs)
and a reduced run on a small machine use the same command. Finished runs are skipped on re-run,
so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from xscreen.errors import XscreenError
from xscreen.tables import markdown_table

log = logging.getLogger("xscreen.la_experiment")

VARIANTS = {"small_atss": "ATSS", "small_lacls": "ATSS+LAcls", "small_lareg": "ATSS+LAreg"}
COLUMNS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")
HEADERS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def make_dataset(out: Path, args: argparse.Namespace) -> Path:
    """Generate the synthetic set once (``xscreen synth``); reuse it when it already exists."""
    if args.data is not None:  # an existing set (e.g. another experiment's), used as it is
        data = Path(args.data)
        if not (data / "annotations" / "test.json").is_file():
            raise XscreenError(f"--data {data}: no annotations/test.json (make one with xscreen synth)")
        return data
    data = out / "data"
    if (data / "annotations" / "test.json").is_file():
        log.info("reusing synthetic set %s", data)
        return data
    total = args.train_images + args.val_images + args.test_images
    a, b = args.train_images / total, args.val_images / total
    splits = f"{a!r},{b!r},{1.0 - a - b!r}"  # full precision: synth wants fractions summing to 1
    cmd = [
        sys.executable, "-m", "xscreen.cli", "synth", "--out", str(data), "--images", str(total),
        "--splits", splits, "--seed", str(args.data_seed), "--size", args.scan_size,
        "--overlap", args.overlap, "--workers", str(args.synth_workers), "--no-progress",
        *args.synth_args.split(),
    ]  # fmt: skip
    log.info("making the synthetic set: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise XscreenError(f"xscreen synth failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return data


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs (VALUE as JSON, else a plain string) -> config overrides."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise XscreenError(f"--set {item!r}: expected KEY=VALUE, e.g. frozen_stages=-1")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def variant_config(
    name: str, out: Path, input_size: int | None, overrides: dict[str, object] | None = None
) -> str:
    """The bundled config, or a copy with a smaller input size and/or ``--set`` overrides next to the runs."""
    if input_size is None and not overrides:
        return name
    from xscreen.model.config import ConfigError, load_config

    changes: dict[str, object] = dict(overrides or {})
    if input_size is not None:
        changes.update(min_size=input_size, max_size=input_size)
    try:
        cfg = load_config(name).with_overrides(**changes)
    except (ConfigError, TypeError, ValueError) as exc:
        raise XscreenError(f"{name}: bad --set override ({exc})") from None
    suffix = "" if input_size is None else f"_{input_size}"
    for key, value in sorted((overrides or {}).items()):
        suffix += f"_{key}={json.dumps(value, separators=(',', ':'))}"
    path = out / "configs" / f"{name}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json() + "\n")
    return str(path)


def train_one(data: Path, run: Path, config: str, seed: int, args: argparse.Namespace) -> Path:
    """One training run through training.train (the code behind ``xscreen train``); returns its weights."""
    from xscreen.training.train import LAST_FILE, STATE_FILE, TrainSettings, train

    done = run / "done.json"
    if done.is_file():
        return run / LAST_FILE
    settings = TrainSettings(
        config=config,
        data=str(data),
        out=str(run),
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        resume=(run / STATE_FILE).is_file(),
        lr=args.lr,
        seed=seed,
        eval_every=0,  # model selection on val would differ per variant; the table uses the last weights
        warmup_iters=args.warmup_iters,
        log_every=args.log_every,
        progress=not args.no_progress,
    )
    result = train(settings)
    done.write_text(json.dumps({"seconds": result["seconds"], "iterations": result["iteration"]}) + "\n")
    return run / LAST_FILE


def evaluate_one(weights: Path, data: Path, run: Path, args: argparse.Namespace) -> dict[str, dict]:
    from xscreen.model.weights import load_weights
    from xscreen.training.evaluate import evaluate_model

    cached = run / "test_metrics.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    model, _ = load_weights(weights, device=args.device_resolved)
    # one detection pass: without a subset, evaluate_model also reports the challenging images
    m = evaluate_model(model, str(data), "test", batch_size=2, device=str(args.device_resolved))
    if "challenging" not in m:
        raise XscreenError(f"{data}: no test image is flagged challenging; raise --overlap")
    res = {
        name: {k: (None if part.get(k) is None else float(part[k])) for k in COLUMNS}
        for name, part in (("test", m), ("challenging", m["challenging"]))
    }
    cached.write_text(json.dumps(res, indent=2) + "\n")
    return res


def _cell(values: list[float]) -> str:
    # undefined metric (None: no objects of that size in the split) -> n/a
    pct = [float("nan") if v is None or v < 0 else 100 * v for v in values]
    if any(v != v for v in pct):
        return "n/a"
    mean = statistics.fmean(pct)
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def format_tables(results: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown tables in the form of paper Table III (test) and Table VIII (challenging subset)."""
    out = []
    for split, title in (
        ("test", "Synthetic test split (form of paper Table III)"),
        ("challenging", "Challenging subset of the synthetic test split (form of paper Table VIII)"),
    ):
        out.append(f"{title}; COCO AP in %, mean ± std over seeds {', '.join(map(str, seeds))}\n")
        rows = [
            [VARIANTS.get(config, config)]
            + [_cell([per_seed[s][split][c] for s in seeds if s in per_seed]) for c in COLUMNS]
            for config, per_seed in results.items()
        ]
        out.append(markdown_table(("Models", *HEADERS), rows, align="l" * (1 + len(HEADERS))))
        out.append("")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/la_experiment", help="experiment folder (data, runs, tables)")
    parser.add_argument(
        "--variants", nargs="+", default=["small_atss", "small_lacls"], help="detector configs"
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


def run(args: argparse.Namespace) -> int:
    import torch

    args.device_resolved = (
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = make_dataset(out, args)
    results: dict[str, dict[int, dict]] = {}
    overrides = parse_overrides(args.set)
    configs = {c: variant_config(c, out, args.input_size, overrides) for c in args.variants}
    for seed in args.seeds:  # seed-major: a partial experiment still has every variant for the first seeds
        for config in args.variants:
            run_dir = out / "runs" / f"{config}_seed{seed}"
            weights = train_one(data, run_dir, configs[config], seed, args)
            results.setdefault(config, {})[seed] = evaluate_one(weights, data, run_dir, args)
            log.info("%s seed %d: test %s", config, seed, results[config][seed]["test"])
    seeds = [s for s in args.seeds if all(s in r for r in results.values())]
    tables = format_tables(results, seeds)
    command = " ".join(["python -m training.la_experiment", *sys.argv[1:]])
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "tables.md").write_text(f"Command: `{command}`\n\n{tables}")
    print(tables)
    print(
        f"({len(seeds)} seeds x {len(results)} variants, {time.time() - t0:.0f} s; "
        f"tables in {out / 'tables.md'})"
    )
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m training.la_experiment", description=__doc__.splitlines()[0])
    add_arguments(_p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(_p.parse_args()))
    except XscreenError as _exc:
        print(f"la-experiment: error: {_exc}", file=sys.stderr)
        sys.exit(2)
