"""Inference latency of ATSS, ATSS+LAcls, ATSS+LAreg (paper and released heads) and torchvision FCOS R-50-FPN.

Usage: python benchmarks/model_latency.py --variant r50 --size 800x1333 [--runs 3] [--device cpu]
       [--batch 8] [--dtype bf16] [--models atss_r50,atss_lacls_r50,...,fcos] [--order-seed 0]

``--batch N`` times one call on N images of the size (per-image time = seconds / N); ``--dtype bf16``
runs the whole inference under ``torch.autocast`` bf16, LA passes included (``--la-bf16`` alone: only
the LA passes);
``--models`` replaces the variant's list by config names (and ``fcos``), e.g. a release-parity LAcls.
A model that fails in a setting is reported as failed in its row instead of stopping the table.

All the detectors (the variant's paper-text ATSS, LAcls, LAreg, the release-parity LAcls (1.5, 0, 1)
and LAreg, and FCOS) run in this process on the same random 0..255 image, with random weights
(nothing is downloaded). Each is warmed up once, then all are timed in ``--runs`` rounds, every model
once per round in a seeded shuffled order (``--order-seed``; benchmarks/_interleave.py), so load drift
on a shared machine hits every model alike. The table shows per model the median seconds and their
min-max, and the ratios to FCOS and to the base (ATSS) as the median of the per-round ratios, with
their min-max for the base. Input geometry is made identical: our detectors get
min_size/max_size equal to the input, FCOS gets the same, so neither resizes. Our detectors run on
channels-last (NHWC) tensors, their default (--nchw to compare). Peak memory: on CUDA
torch.cuda.max_memory_allocated during
one inference; on CPU the peak resident set during one inference minus the resident set just before
it (Linux VmHWM, reset through /proc/self/clear_refs; ru_maxrss growth where that is unavailable),
measured in a fresh subprocess per model (so one model's peak does not hide another's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import torch
from _interleave import Timings, interleave

from xscreen.argtypes import int_at_least, size_pair
from xscreen.inference.backend import BackendError, resolve_device
from xscreen.model import build_detector, load_config
from xscreen.tables import markdown_table

# the paper-text variants, then the release-parity ones (method.md §7.12)
VARIANTS = {
    "r50": (
        "atss_r50",
        "atss_lacls_r50",
        "atss_lareg_r50",
        "atss_lacls_r50_release",
        "atss_lareg_r50_release",
    ),
    "small": ("small_atss", "small_lacls", "small_lareg", "small_lacls_release", "small_lareg_release"),
}
LABELS = {"none": "ATSS", "cls": "ATSS+LAcls", "reg": "ATSS+LAreg"}


def label(name: str) -> str:
    """Row label: 'ATSS+LAcls' (paper-text head) or 'ATSS+LAcls released (1.5, 0, 1)' (release config)."""
    if name == "fcos":
        return "FCOS R-50 (torchvision)"
    cfg = load_config(name)
    text = LABELS[cfg.la_mode]
    if cfg.released:
        text += " released"
        if cfg.uses_la:
            text += " (" + ", ".join(f"{c:g}" for c in cfg.la_coeffs) + ")"
    return text


def build(
    name: str,
    size: tuple[int, int],
    device: str,
    batched_grad: bool = False,
    channels_last: bool = True,
    la_bf16: bool = False,
):
    """A detector by config name, or 'fcos' for torchvision's FCOS R-50-FPN, in eval mode."""
    h, w = size
    if name == "fcos":
        from torchvision.models.detection import fcos_resnet50_fpn

        model = fcos_resnet50_fpn(weights=None, weights_backbone=None, min_size=min(h, w), max_size=max(h, w))
    else:
        cfg = load_config(name).with_overrides(min_size=min(h, w), max_size=max(h, w))
        model = build_detector(
            cfg, la_batched_grad=batched_grad, channels_last=channels_last, la_grad_bf16=la_bf16
        )
    return model.to(device).eval()


def run_once(model, images: list[torch.Tensor], stages: dict | None, dtype: str = "fp32") -> float:
    device = images[0].device
    t0 = time.perf_counter()
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"),
    ):
        if hasattr(model, "predict"):
            model.predict(images, stages)
        else:
            model([im / 255.0 for im in images])  # torchvision detection models take 0..1 images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def time_models(
    models: dict, images: list[torch.Tensor], runs: int, dtype: str = "fp32", seed: int = 0
) -> Timings:
    """Each model warmed up once, then ``runs`` rounds with every model once per round in a seeded
    shuffled order (benchmarks/_interleave.py); a model whose warm-up fails is left out of the rounds
    and named in ``failed``."""

    def runner(model):
        def run(timed: bool) -> tuple[float, dict[str, float]]:
            stages: dict[str, float] = {}
            return run_once(model, images, stages if timed else None, dtype), stages

        return run

    return interleave({n: runner(m) for n, m in models.items()}, runs, seed=seed, keep_going=True)


def peak_memory_mib(
    name: str,
    size: tuple[int, int],
    device: str,
    batched_grad: bool,
    channels_last: bool,
    la_bf16: bool,
    batch: int = 1,
    dtype: str = "fp32",
) -> float:
    """Peak memory of one inference (see module docstring), measured in a child process."""
    cmd = [sys.executable, __file__, "--_memory-child", name, "--size", f"{size[0]}x{size[1]}"]
    cmd += ["--device", device, "--batch", str(batch), "--dtype", dtype]
    if batched_grad:
        cmd.append("--batched-grad")
    if not channels_last:
        cmd.append("--nchw")
    if la_bf16:
        cmd.append("--la-bf16")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _memory_child(
    name: str,
    size: tuple[int, int],
    device: str,
    batched_grad: bool,
    channels_last: bool,
    la_bf16: bool,
    batch: int = 1,
    dtype: str = "fp32",
) -> None:
    import resource

    torch.manual_seed(0)
    model = build(name, size, device, batched_grad, channels_last, la_bf16)
    image = [(torch.rand(3, *size) * 255).to(device) for _ in range(batch)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(model, image, None, dtype)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        # Reset the kernel's peak-RSS mark (VmHWM) so that building the model does not count, then
        # report the peak reached during one inference minus the resident set just before it.
        rss_before = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            run_once(model, image, None, dtype)
            peak = (_status_kib("VmHWM") - rss_before) / 1024
        except OSError:  # no clear_refs: fall back to the growth of ru_maxrss
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run_once(model, image, None, dtype)
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"peak_mib": peak}))


def bf16_deviation(models: dict, image: torch.Tensor) -> dict[str, float]:
    """Max |sigmoid(cls logits) bf16-LA - fp32-LA| per LA model: the check of the bf16 speed mode."""
    from xscreen.model.transform import normalize, pad_batch

    batch, _ = pad_batch([normalize(image)])
    out = {}
    for name, model in models.items():
        if not hasattr(model, "la_grad_bf16") or not model.cfg.uses_la:
            continue
        with torch.inference_mode():
            model.la_grad_bf16 = False
            ref = torch.sigmoid(model.forward_raw(batch)[0])
            model.la_grad_bf16 = True
            fast = torch.sigmoid(model.forward_raw(batch)[0])
        out[name] = float((fast - ref).abs().max())
    return out


STAGE_KEYS = ("backbone_fpn", "head_first", "la_grad", "head_second", "postprocess")
HEADER = (
    "model",
    "seconds",
    "seconds min-max",
    "/ FCOS",
    "/ ATSS",
    "/ ATSS min-max",
    "backbone+FPN",
    "head 1st",
    "LA grads",
    "head 2nd",
    "post",
)


def latency_table(names: list[str], timings: Timings, memory: dict[str, float], args) -> str:
    """The header line and the markdown table: per model its median seconds and their min-max, the
    medians of its per-round ratios to FCOS and to the base (names[0]) with the latter's min-max, its
    median stage split and its peak memory."""
    base, ok = names[0], timings.seconds
    h, w = args.size
    mem_what = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS over start"
    intro = (
        f"Input {h}x{w}, batch {args.batch}, {args.dtype}, device {args.device} "
        f"({torch.get_num_threads()} threads), random weights; seconds per call of {args.batch} image(s).\n"
        f"Protocol: one warm-up per model, then {args.runs} rounds with every model once per round in "
        f"a shuffled order (seed {args.order_seed}); seconds are medians over the rounds, '/ FCOS' and "
        f"'/ ATSS' (to {base}) are medians of the per-round ratios.\n"
    )
    cells = []
    for name in names:
        row = label(name) + (f" ({name})" if args.models else "")
        if name in timings.failed:
            cells.append([row, "failed", "-", "-", "-", timings.failed[name], *["-"] * 6])
            continue
        total = timings.total(name)
        if name == "fcos":
            split = ["-"] * len(STAGE_KEYS)
        else:
            split = [f"{timings.stage_median(name, k):.3f}" for k in STAGE_KEYS]
        fcos = f"{timings.ratio(name, 'fcos').median:.2f}" if "fcos" in ok else "nan"
        if base in ok:
            to_base = timings.ratio(name, base)
            atss = [f"{to_base.median:.2f}", to_base.range_text(2)]
        else:
            atss = ["nan", "-"]
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        cells.append([row, f"{total.median:.3f}", total.range_text(3), fcos, *atss, *split, mem])
    header = (*HEADER, f"peak MiB ({mem_what})")
    return intro + "\n" + markdown_table(header, cells, align="l" * len(header))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=sorted(VARIANTS), default="r50")
    p.add_argument(
        "--size", type=size_pair(32, "HEIGHTxWIDTH such as 800x1333"), default=(800, 1333), help="input HxW"
    )
    p.add_argument(
        "--runs",
        type=int_at_least(3),
        default=3,
        help="timed rounds, every model once per round (medians reported, >= 3)",
    )
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available"
    )
    p.add_argument("--batched-grad", action="store_true", help="LA: one batched VJP for g1 and g2")
    p.add_argument("--nchw", dest="channels_last", action="store_false", help="our detectors on NCHW tensors")
    p.add_argument(
        "--la-bf16", action="store_true", help="LA: first prediction and gradient passes under bf16 autocast"
    )
    p.add_argument("--batch", type=int_at_least(1), default=1, help="images per call (default 1)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the whole inference under torch.autocast bf16 (default fp32)",
    )
    p.add_argument(
        "--models",
        type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
        help="comma list of config names and/or 'fcos' instead of --variant's (the first is the / ATSS base)",
    )
    p.add_argument(
        "--order-seed", type=int, default=0, help="seed of the shuffled model order per round (default 0)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-model memory subprocesses")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except BackendError as exc:
        p.error(str(exc))
    if args.memory_child:
        _memory_child(
            args.memory_child,
            args.size,
            args.device,
            args.batched_grad,
            args.channels_last,
            args.la_bf16,
            args.batch,
            args.dtype,
        )
        return 0
    names = args.models or [*VARIANTS[args.variant], "fcos"]
    for n in names:
        if n != "fcos":
            try:
                load_config(n)
            except Exception as exc:
                p.error(f"--models: {exc}")
    torch.manual_seed(0)
    images = [(torch.rand(3, *args.size) * 255).to(args.device) for _ in range(args.batch)]
    image = images[0]
    if args.dtype == "bf16":
        # LA's passes run under their own autocast, which would otherwise switch bf16 off inside them
        args.la_bf16 = True
    models = {
        n: build(n, args.size, args.device, args.batched_grad, args.channels_last, args.la_bf16)
        for n in names
    }
    timings = time_models(models, images, args.runs, args.dtype, args.order_seed)
    deviations = bf16_deviation(models, image) if args.la_bf16 else {}
    del models
    memory = {}
    if not args.no_memory:
        for name in timings.seconds:
            with contextlib.suppress(subprocess.CalledProcessError):  # left "-" in the table
                memory[name] = peak_memory_mib(
                    name,
                    args.size,
                    args.device,
                    args.batched_grad,
                    args.channels_last,
                    args.la_bf16,
                    args.batch,
                    args.dtype,
                )
    print(latency_table(names, timings, memory, args))
    for name, dev in deviations.items():
        print(f"\n{name}: bf16 LA gradients vs fp32, max |score difference| over all anchors = {dev:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
