"""The LA experiment: ATSS vs ATSS+LAcls (vs ATSS+LAreg) on a synthetic overlap-heavy set, 3 seeds.

A variant is a config name, optionally with per-variant overrides: ``NAME@KEY=VALUE[@KEY=VALUE...]``
(VALUE as JSON), e.g. ``small_lacls_release@la_coeffs=[1,0,0]``; ``RELEASE_STUDY`` lists the four
variants that separate the released head from LA (docs/la_experiment.md).

Makes one synthetic data set with ``xscreen synth`` (kept across re-runs), trains every variant
with identical settings for every seed through the real ``xscreen train`` code path, evaluates the
last weights on the test split and on its challenging subset with training.evaluate, and prints
mean +/- std tables in the form of the paper's Tables III and VIII (COCO AP in %).

``xscreen la-experiment --out runs/la`` (``make la-experiment``). Size knobs
(``--train-images``, ``--epochs``, ...) let the full-size run (a few thousand scans, 12 epochs)
and a reduced run on a small machine use the same command. Finished runs are skipped on re-run,
so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
from pathlib import Path

from xscreen.errors import XscreenError
from xscreen.tables import markdown_table

log = logging.getLogger("xscreen.la_experiment")

LABELS = {"none": "ATSS", "cls": "ATSS+LAcls", "reg": "ATSS+LAreg"}
VARIANTS = {"small_atss": "ATSS", "small_lacls": "ATSS+LAcls", "small_lareg": "ATSS+LAreg"}
# What the released code changed at once (docs/method.md §7): the head, then LA on it.
RELEASE_STUDY = (
    "small_atss",  # plain ATSS: delta-xywh regression, centerness conv
    "small_lacls_release@la_coeffs=[1,0,0]",  # released bin head + reg_conf, LA off (x_new = x)
    "small_lacls_release",  # the released LAcls, (1.5, 0, 1) (method.md §7.5)
    "small_lacls_release@la_coeffs=[1,1,1]",  # the paper's Eq. 5 / 7 on the released head
)
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


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
    """``NAME@KEY=VALUE@...`` -> (config name, overrides); XscreenError for an empty name or a bad pair."""
    name, *pairs = spec.split("@")
    if not name or any(not p for p in pairs):
        example = "small_lacls@la_coeffs=[1,0,0]"
        raise XscreenError(f"variant {spec!r}: expected NAME[@KEY=VALUE...], e.g. {example}")
    try:
        return name, parse_overrides(pairs)
    except XscreenError as exc:
        raise XscreenError(f"variant {spec!r}: {exc}".replace("--set ", "")) from None


def run_name(spec: str) -> str:
    """A folder name for a variant spec: ``@`` -> ``+``, anything outside [A-Za-z0-9_.,=+-] -> ``_``."""
    return re.sub(r"[^A-Za-z0-9_.,=+\-\[\]]", "_", spec.replace("@", "+"))


def _coeffs(c) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in c) + ")"


def variant_label(spec: str) -> str:
    """The table label of a variant: the bundled name's label, else one built from its config, e.g.
    'ATSS+LAcls, released head, (1.5, 0, 1)' or 'ATSS, released head, LA off (1, 0, 0)'."""
    if spec in VARIANTS:
        return VARIANTS[spec]
    from xscreen.model.config import ConfigError, load_config

    try:
        name, overrides = parse_variant(spec)
        cfg = load_config(name).with_overrides(**overrides)
    except (ConfigError, XscreenError, TypeError, ValueError):
        return spec
    la_off = cfg.uses_la and tuple(cfg.la_coeffs) == (1.0, 0.0, 0.0)
    parts = ["ATSS" if la_off else LABELS[cfg.la_mode]]
    if cfg.released:
        parts.append("released head")
    if la_off:
        parts.append("LA off (1, 0, 0)")
    elif cfg.uses_la:
        parts.append(_coeffs(cfg.la_coeffs))
    others = sorted((k, v) for k, v in overrides.items() if k != "la_coeffs")
    parts += [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in others]
    return ", ".join(parts)


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


def la_weights_one(weights: Path, data: Path, run: Path, images: int) -> list[dict[str, float]] | None:
    """training.la_probe.weight_stats of an LAcls run on the first ``images`` test scans (cached in
    RUN/la_weights.json); None for a run without LAcls weights (ATSS, LAreg)."""
    cached = run / "la_weights.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from xscreen.model.weights import load_weights
    from xscreen.training.dataset import CocoDetection
    from xscreen.training.la_probe import weight_stats

    model, _ = load_weights(weights, device="cpu")
    if not model.cfg.la_cls:
        return None
    stats = weight_stats(model.eval(), CocoDetection(data, "test", class_names=model.cfg.class_names), images)
    cached.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def format_weight_table(stats: dict[str, dict[int, list[dict] | None]], images: int) -> str:
    """One row per LAcls variant: |w - 0.5| and the relative feature change, over levels and seeds."""
    rows = []
    for config, per_seed in stats.items():
        levels = [lv for s in per_seed.values() if s for lv in s]
        if not levels:
            continue
        rows.append(
            [
                variant_label(config),
                f"{statistics.fmean(lv['w_mean'] for lv in levels):.1e}",
                f"{max(lv['w_max'] for lv in levels):.1e}",
                f"{statistics.fmean(lv['change'] for lv in levels):.1e}",
                f"{max(lv['change'] for lv in levels):.1e}",
            ]
        )
    if not rows:
        return ""
    header = (
        "Models",
        "mean abs(w - 0.5)",
        "max abs(w - 0.5)",
        "mean norm(x_new - x) / norm(x)",
        "worst level's mean of it",
    )
    title = (
        f"LA weights on the first {images} test scans (pseudo-labels; weights that Eq. 7 uses; "
        "mean over P3-P7 and seeds, max over them)\n"
    )
    return title + "\n" + markdown_table(header, rows, align="lllll") + "\n"


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
            [variant_label(config)]
            + [_cell([per_seed[s][split][c] for s in seeds if s in per_seed]) for c in COLUMNS]
            for config, per_seed in results.items()
        ]
        out.append(markdown_table(("Models", *HEADERS), rows, align="l" * (1 + len(HEADERS))))
        out.append("")
    return "\n".join(out)
