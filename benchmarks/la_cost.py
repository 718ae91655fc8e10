"""Why the released LAcls head cannot reach 1.6x ATSS's latency on this CPU: FLOPs and seconds per stage.

Usage: python benchmarks/la_cost.py [--base atss_r50] [--models atss_lacls_r50_release,atss_lacls_r50]
       [--size 800x1333] [--runs 3] [--device auto] [--order-seed 0] [--json PATH]

For the base model (plain ATSS) and each Label-aware model the script counts the FLOPs of every stage
analytically (``torch.utils.flop_counter.FlopCounterMode``, which also counts ``convolution_backward``,
so the gradient pass is in) and times the same stages (``forward_raw``'s stage timings under
``torch.inference_mode``: one warm-up per model, then ``--runs`` rounds with every model once per
round in a seeded shuffled order, medians over the rounds; the measured ratio to the base is the
median of the per-round ratios, with their min-max; benchmarks/_interleave.py):

- ``backbone_fpn``: ResNet + FPN (the same network, hence the same FLOPs, in every model);
- ATSS ``head``: classification tower + ``atss_cls`` and regression tower + ``atss_reg`` + quality
  branch, once;
- LA ``head_first``: the first prediction (LAcls: classification tower + ``atss_cls``; LAreg: the
  regression tower + ``atss_reg``); ``la_grad``: the vector-Jacobian product(s) back through that
  tower to its input; ``head_second``: the reweighting and the second prediction, where the
  classification tower runs once and the regression tower twice in a row (docs/method.md §7.4).

FLOPs are expressed in "tower passes": one pass of the base model's classification tower and
``atss_cls`` over P3-P7. The released LAcls (``atss_lacls_r50_release``, (a, b, c) = (1.5, 0, 1)) skips
the label-gradient pass because b = 0 (docs/method.md §7.5), so its head is 1 (first prediction)
+ 1 (one gradient pass) + 3 (second prediction) = about 5 tower passes against ATSS's 2; the paper
LAcls (``atss_lacls_r50``, (1, 1, 1)) runs two gradient passes: about 6. Exactly, at R-50 (256
channels, 4 convs, 12 classes): ATSS 1.99, released LAcls 5.04 (its ``atss_reg`` has 4 x 17 bin
outputs), paper LAcls 5.98.

If the head's convolutions already run near the CPU's arithmetic peak, the ratio of latencies is
bound by arithmetic. With B the base model's measured backbone+FPN seconds and R the GFLOP/s its
head achieved, the FLOP-bound floor of a model's latency relative to the base is

    floor = (B + F_head_model / R) / (B + F_head_base / R)

(the denominator is the base model's measured network time). A floor above the target (1.6x) means
no implementation of the same arithmetic at the base head's rate can meet it. The summary also shows
the ratio the model would have if all its head stages ran at the fastest GFLOP/s any head stage
reached in this run, and, on CPU, the share of one head call's wall time spent in convolutions
(``aten.conv2d`` / ``aten.convolution`` and ``aten.convolution_backward``, each timed by a
``TorchDispatchMode`` around the op; the mode's own per-op overhead is in the wall time, so the share
is if anything low).

FLOPs count convolutions and matrix products only (a multiply-add is 2 FLOP); GroupNorm, ReLU,
sigmoid and the label masks are not counted (they are in the measured seconds). They are counted
under ``torch.inference_mode`` like the timed runs: the LA gradient pass enables grad locally and its
``convolution_backward`` is counted (the counts are the same without inference mode). Seconds are the
network only (``forward_raw`` on the normalised, padded batch): no resize, no post-processing.
Random weights, one random 0..255 image for all models, channels-last as ``model_latency.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _interleave import Spread, Timings, interleave
from model_latency import build, label
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from xscreen.argtypes import int_at_least, size_pair
from xscreen.inference.backend import BackendError, resolve_device
from xscreen.model import load_config
from xscreen.model.label_aware import label_aware_forward, label_aware_weights
from xscreen.model.timing import sync
from xscreen.model.transform import normalize, pad_batch
from xscreen.tables import markdown_table

TARGET = 1.6  # the latency target relative to ATSS that the released LAcls misses
LA_STAGES = ("head_first", "la_grad", "head_second")
BASE_STAGES = ("head",)


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker: counts under 'Global' only.

    The tracker hooks every module's inputs with ``register_multi_grad_hook``, and
    ``torch.autograd.grad`` with respect to a leaf that such a hook watches raises "A leaf node was
    passed to _will_engine_execute_node" (pytorch/pytorch#131753); the LA gradient pass is exactly that
    (the leaf copy of the FPN features). Per-module counts are not needed here.
    """

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def count_flops(fn) -> int:
    """FLOPs of fn() (forward and backward convolutions / matrix products), by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def network_batch(model, image: torch.Tensor) -> torch.Tensor:
    """The normalised, padded [1, 3, H, W] batch that ``forward_raw`` runs on (as ``predict`` makes it
    when the config's min/max size equal the image's, so nothing is resized)."""
    batch, _ = pad_batch([normalize(image)])
    if model.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def first_prediction(model, feats: list[torch.Tensor]) -> list:
    """The LA first prediction on the head inputs, as ``label_aware_weights`` computes it."""
    if model.cfg.la_mode == "cls":
        return [model.head.cls_logits(f) for f in feats]
    return [model.head.reg_outputs(f, level, repeat=1) for level, f in enumerate(feats)]  # as _reg_logits


def la_weights(model, feats: list[torch.Tensor]):
    """``label_aware_weights`` with the arguments ``label_aware_forward`` passes it at inference."""
    cfg = model.cfg
    return label_aware_weights(
        model.head,
        feats,
        cfg.la_mode,
        None,
        cfg.reg_max,
        model.la_batched_grad,
        None,
        False,
        released=cfg.released,
        skip_label_grad=cfg.skip_label_grad,
    )


def head_call(model, feats: list[torch.Tensor]):
    """The whole head as ``forward_raw`` runs it."""
    if not model.cfg.uses_la:
        return model.head.forward_plain(feats)
    return label_aware_forward(model.head, feats, model.cfg, batched=model.la_batched_grad)


def stage_flops(model, batch: torch.Tensor) -> dict[str, int]:
    """FLOPs per stage: backbone_fpn, then head (ATSS) or head_first, la_grad, head_second (LA)."""
    with torch.inference_mode():
        out = {"backbone_fpn": count_flops(lambda: model.backbone(batch))}
        feats = model.backbone(batch)
        if not model.cfg.uses_la:
            out["head"] = count_flops(lambda: head_call(model, feats))
            return out
        first = count_flops(lambda: first_prediction(model, feats))
        weights = count_flops(lambda: la_weights(model, feats))
        whole = count_flops(lambda: head_call(model, feats))
    out.update(head_first=first, la_grad=weights - first, head_second=whole - weights)
    return out


def tower_pass_flops(model, batch: torch.Tensor) -> int:
    """The unit: one classification tower + atss_cls pass over all levels."""
    with torch.inference_mode():
        feats = model.backbone(batch)
        return count_flops(lambda: [model.head.cls_logits(f) for f in feats])


def _run_once(model, batch: torch.Tensor, timings: dict | None) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.forward_raw(batch, timings=timings)
    sync(batch.device)
    return time.perf_counter() - t0


def time_stages(models: dict, batches: dict, runs: int, seed: int = 0) -> Timings:
    """Seconds of the whole network and of each stage per model and round: one warm-up each, then
    ``runs`` rounds with every model once per round in a seeded shuffled order
    (benchmarks/_interleave.py)."""

    def runner(model, batch):
        def run(timed: bool) -> tuple[float, dict[str, float]]:
            st: dict[str, float] = {}
            seconds = _run_once(model, batch, st if timed else None)
            if not model.cfg.uses_la:  # forward_raw books the whole ATSS head under head_first
                st["head"] = st.pop("head_first", 0.0)
            return seconds, st

        return run

    return interleave({n: runner(m, batches[n]) for n, m in models.items()}, runs, seed=seed)


class _ConvClock(TorchDispatchMode):
    """Adds up the wall time of the convolutions (forward and backward) run under it (CPU: synchronous)."""

    # under inference_mode aten.conv2d reaches the mode undecomposed; with grad it arrives as convolution
    CONVS = frozenset(
        {
            torch.ops.aten.conv2d.default,
            torch.ops.aten.convolution.default,
            torch.ops.aten.convolution_backward.default,
        }
    )

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in self.CONVS:
            return func(*args, **(kwargs or {}))
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - t0
        return out


def conv_share(model, batch: torch.Tensor) -> float | None:
    """Share of one head call's wall time spent in convolutions (forward and backward); None off CPU,
    where a kernel's launch returns before it has run."""
    if batch.device.type != "cpu":
        return None
    with torch.inference_mode():
        feats = model.backbone(batch)
        clock = _ConvClock()
        t0 = time.perf_counter()
        with clock:
            head_call(model, feats)
        wall = time.perf_counter() - t0
    return clock.seconds / wall


def summarize(base: str, results: dict) -> dict:
    """B, R, the fastest head rate and per model: measured ratio (the median of the per-round ratios to
    the base, with their spread), FLOP-bound floor, ratio at that rate. B and R come from the base
    model's median stage seconds."""
    b = results[base]["stages"]["backbone_fpn"]["seconds"]
    base_head = results[base]["stages"]["head"]
    r = base_head["gflop"] / base_head["seconds"]
    r_max = max(
        s["gflop"] / s["seconds"]
        for res in results.values()
        for k, s in res["stages"].items()
        if k != "backbone_fpn" and s["seconds"] > 0
    )
    denominator = b + base_head["gflop"] / r
    out = {"backbone_fpn_seconds": b, "base_head_gflop_per_s": r, "fastest_head_gflop_per_s": r_max}
    out["models"] = {}
    base_rounds = results[base]["total"]["round_seconds"]
    for name, res in results.items():
        # both models ran in the same round, under about the same load (benchmarks/_interleave.py)
        ratios = [a / b for a, b in zip(res["total"]["round_seconds"], base_rounds, strict=True)]
        spread = Spread.of(ratios)
        out["models"][name] = {
            "measured_ratio": spread.median,
            "measured_ratio_min": spread.min,
            "measured_ratio_max": spread.max,
            "measured_ratio_p25": spread.p25,
            "measured_ratio_p75": spread.p75,
            "round_ratios": ratios,
            "floor": (b + res["head_gflop"] / r) / denominator,
            "ratio_at_fastest": (b + res["head_gflop"] / r_max) / denominator,
        }
    return out


def model_record(name: str, cfg, flops: dict[str, int], unit: int, timed: Timings, share) -> dict:
    """One model's entry of the JSON record: per stage and in total its FLOPs, tower passes, median
    seconds (with min, max and the seconds of every round) and achieved GFLOP/s."""

    def entry(gflop: float, rounds: list[float]) -> dict:
        spread = Spread.of(rounds)
        return {
            "gflop": gflop,
            "tower_passes": gflop * 1e9 / unit,
            "seconds": spread.median,
            "seconds_min": spread.min,
            "seconds_max": spread.max,
            "round_seconds": rounds,
            "gflop_per_s": gflop / spread.median if spread.median > 0 else None,
        }

    stage_names = ("backbone_fpn", *(LA_STAGES if cfg.uses_la else BASE_STAGES))
    stages = {k: entry(flops[k] / 1e9, [st.get(k, 0.0) for st in timed.stages[name]]) for k in stage_names}
    head_flops = sum(flops.values()) - flops["backbone_fpn"]
    return {
        "label": label(name),
        "la_mode": cfg.la_mode,
        "stages": stages,
        "total": entry(sum(flops.values()) / 1e9, timed.seconds[name]),
        "head_gflop": head_flops / 1e9,
        "head_tower_passes": head_flops / unit,
        "head_conv_share": share,
    }


def _model_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of config names, got {text!r}")
    return names


def report(args, network_hw: tuple[int, int], unit: int, results: dict, summary: dict) -> str:
    """The printed report: header lines, the per-stage table, B and R, the summary table, verdicts."""
    names = [args.base, *args.models]
    (h, w), (ph, pw) = args.size, network_hw
    lines = [
        f"Input {h}x{w} (network batch {ph}x{pw}), device {args.device} ({torch.get_num_threads()} "
        f"threads), random weights; seconds of forward_raw (network only).",
        f"Protocol: one warm-up per model, then {args.runs} rounds with every model once per round in a "
        f"shuffled order (seed {args.order_seed}); seconds are medians over the rounds (min-max beside "
        f"them), 'measured / {args.base}' is the median of the per-round ratios.",
        f"FLOPs: torch.utils.flop_counter (convolutions and matrix products, forward and backward; "
        f"multiply-add = 2). Tower pass = {unit / 1e9:.3f} GFLOP (classification tower + atss_cls "
        f"of {args.base} over P3-P7).",
        "",
    ]
    rows = []
    for name in names:
        res = results[name]
        for k, s in [*res["stages"].items(), ("total", res["total"])]:
            rate = "-" if s["gflop_per_s"] is None else f"{s['gflop_per_s']:.1f}"
            spread = f"{s['seconds_min']:.4f}-{s['seconds_max']:.4f}"
            gflop, passes = f"{s['gflop']:.3f}", f"{s['tower_passes']:.2f}"
            rows.append([name, k, gflop, passes, f"{s['seconds']:.4f}", spread, rate])
    header = ("model", "stage", "GFLOP", "tower passes", "median s", "min-max s", "GFLOP/s")
    lines.append(markdown_table(header, rows, align="llrrrrr"))
    b, r, r_max = (
        summary[k] for k in ("backbone_fpn_seconds", "base_head_gflop_per_s", "fastest_head_gflop_per_s")
    )
    lines += [
        "",
        f"B = {b:.4f} s ({args.base} backbone+FPN), R = {r:.1f} GFLOP/s ({args.base} head), "
        f"fastest head stage {r_max:.1f} GFLOP/s; floor = (B + F_head / R) / (B + F_head_base / R).",
        "",
    ]
    rows = []
    for name in names:
        res, s = results[name], summary["models"][name]
        share = "-" if res["head_conv_share"] is None else f"{100 * res['head_conv_share']:.0f}%"
        rows.append(
            [
                f"{res['label']} ({name})",
                f"{res['head_tower_passes']:.2f}",
                f"{s['measured_ratio']:.3f}",
                f"{s['measured_ratio_min']:.3f}-{s['measured_ratio_max']:.3f}",
                f"{s['floor']:.3f}",
                f"{s['ratio_at_fastest']:.3f}",
                share,
            ]
        )
    header = (
        "model",
        "head tower passes",
        f"measured / {args.base}",
        "per-round min-max",
        "FLOP-bound floor",
        "ratio at fastest head GFLOP/s",
        "head time in convs",
    )
    lines += [markdown_table(header, rows), ""]
    for name in args.models:
        floor = summary["models"][name]["floor"]
        verdict = "above" if floor > TARGET else "below"
        lines.append(f"{name}: FLOP-bound floor {floor:.3f}x, {verdict} the {TARGET}x target")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="atss_r50", help="plain ATSS config (la_mode none), default atss_r50")
    p.add_argument(
        "--models",
        type=_model_list,
        default=["atss_lacls_r50_release", "atss_lacls_r50"],
        help="comma list of LA configs (default atss_lacls_r50_release,atss_lacls_r50)",
    )
    p.add_argument(
        "--size", type=size_pair(32, "HEIGHTxWIDTH such as 800x1333"), default=(800, 1333), help="input HxW"
    )
    p.add_argument(
        "--runs",
        type=int_at_least(1),
        default=3,
        help="timed rounds, every model once per round (medians, >= 1)",
    )
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available"
    )
    p.add_argument(
        "--order-seed", type=int, default=0, help="seed of the shuffled model order per round (default 0)"
    )
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except BackendError as exc:
        p.error(str(exc))
    for role, name in [("--base", args.base), *(("--models", n) for n in args.models)]:
        try:
            cfg = load_config(name)
        except Exception as exc:
            p.error(f"{role}: {str(exc).splitlines()[0]}")
        if role == "--base" and cfg.uses_la:
            p.error(f"--base: {name} has la_mode {cfg.la_mode!r}; the base must be plain ATSS (la_mode none)")
        if role == "--models" and not cfg.uses_la:
            p.error(f"--models: {name} has la_mode 'none' (plain ATSS), not a Label-aware model")
    if len(set(args.models)) != len(args.models):
        p.error("--models: a config is listed twice")
    names = [args.base, *args.models]

    torch.manual_seed(0)
    image = (torch.rand(3, *args.size) * 255).to(args.device)
    models = {n: build(n, args.size, args.device) for n in names}
    batches = {n: network_batch(m, image) for n, m in models.items()}
    unit = tower_pass_flops(models[args.base], batches[args.base])
    flops = {n: stage_flops(m, batches[n]) for n, m in models.items()}
    timed = time_stages(models, batches, args.runs, args.order_seed)
    shares = {n: conv_share(m, batches[n]) for n, m in models.items()}

    results = {n: model_record(n, models[n].cfg, flops[n], unit, timed, shares[n]) for n in names}
    summary = summarize(args.base, results)

    h, w = args.size
    ph, pw = batches[args.base].shape[-2:]
    print(report(args, (int(ph), int(pw)), unit, results, summary))

    if args.json:
        record = {
            "base": args.base,
            "models": args.models,
            "size": [h, w],
            "batch_size": [int(ph), int(pw)],
            "device": args.device,
            "threads": torch.get_num_threads(),
            "runs": args.runs,
            "order_seed": args.order_seed,
            "orders": [list(order) for order in timed.orders],
            "tower_pass_gflop": unit / 1e9,
            "results": results,
            "summary": summary,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
