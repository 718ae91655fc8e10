"""ONNX Runtime (CPU) vs torch eager for the ATSS+LA network, with ORT graph-optimisation and thread settings.

Usage: python benchmarks/onnx_vs_torch.py [--variants small_lacls@256x256,atss_lacls_r50] [--runs 3]
       [--threads 1,2] [--levels basic,extended,all] [--int8] [--out-dir DIR]

For each variant (random weights, nothing downloaded) the detector is exported with
model.onnx_export (the LA loop as explicit operators) and both run the network part on the same
normalised, padded batch of one image: torch ``forward_raw`` (autograd LA loop) under
``torch.inference_mode`` vs ``InferenceSession.run``; pre/post-processing is the same Python code
for both and is not timed. Sizes: ``NAME@HxW``, else small_* at its config's 512x512 and *_r50 at
800x1333; the default list adds small_lacls at 256x256, the bundled weights' input size. Every setting is
warmed up once, then timed ``--runs`` times; the table shows the fastest run (robust to other load on
the machine) and the median. "speed-up" = torch seconds / ORT seconds at the same thread count.
``--int8`` adds the static int8 export (model.onnx_quantize, calibrated on 4 synthetic scans) as
"onnxruntime int8" rows; its max abs diff shows how far quantisation moves the raw outputs (with random
weights; `xscreen eval --onnx` measures what that does to accuracy on trained weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xscreen.argtypes import choice_list, int_list, non_negative_int, positive_int, size_pair
from xscreen.inference.onnx_backend import GRAPH_OPTIMIZATION_LEVELS
from xscreen.tables import markdown_table

SIZES = {"small": (512, 512), "r50": (800, 1333)}
DEFAULT_VARIANTS = "small_lacls@256x256,small_lacls,atss_lacls_r50"


def parse_variant(spec: str) -> tuple[str, tuple[int, int]]:
    """'small_lacls@256x256' -> ('small_lacls', (256, 256)); without '@', the variant's default size.

    An argparse type: an unknown detector config or a malformed size is a usage error.
    """
    from xscreen.model.config import available_configs

    name, _, size = spec.strip().partition("@")
    if name not in available_configs():
        raise argparse.ArgumentTypeError(
            f"unknown detector config {name!r} (expected one of {', '.join(available_configs())})"
        )
    if not size:
        return name, SIZES["r50" if name.endswith("r50") else "small"]
    return name, size_pair(32, "NAME@HEIGHTxWIDTH such as small_lacls@256x256")(size)


def variant_list(text: str) -> list[tuple[str, tuple[int, int]]]:
    """argparse type: comma-separated NAME[@HxW] -> [(name, (h, w)), ...]."""
    specs = [parse_variant(v) for v in text.split(",") if v.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"expected comma-separated NAME[@HxW], got {text!r}")
    return specs


def _timed(fn, runs: int) -> list[float]:
    fn()  # warm-up (first-run allocations, ORT's lazy kernel selection)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_variant(
    name: str,
    size: tuple[int, int],
    threads: list[int],
    levels: list[str],
    runs: int,
    out_dir: Path,
    int8: bool = False,
) -> list[dict]:
    import onnxruntime as ort

    from xscreen.inference.onnx_backend import session_options
    from xscreen.model import build_detector
    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
    from xscreen.model.onnx_quantize import network_inputs
    from xscreen.training.calibration import synthetic_calibration_images

    h, w = size
    torch.manual_seed(0)
    det = build_detector(name).eval()
    path = out_dir / f"{name}-{h}x{w}.onnx"
    t0 = time.perf_counter()
    export_onnx(det, path, name=name, version="bench", sha256="0" * 64)
    export_s = time.perf_counter() - t0
    engines = [("onnxruntime", path)]
    if int8:
        calib = network_inputs(synthetic_calibration_images(det.cfg, 4), det.cfg)
        path8 = out_dir / f"{name}-{h}x{w}-int8.onnx"
        export_onnx(det, path8, name=name, version="bench", sha256="0" * 64, calibration=calib)
        engines.append(("onnxruntime int8", path8))
    batch = torch.randn(1, 3, h, w)
    feed = {INPUT_NAME: batch.numpy()}
    rows = []
    for n in threads:
        torch.set_num_threads(n)

        def run_torch():
            with torch.inference_mode():
                det.forward_raw(batch)

        t_torch = _timed(run_torch, runs)
        with torch.inference_mode():
            ref = [t.numpy() for t in det.forward_raw(batch)]
        rows.append(
            dict(
                variant=name,
                size=f"{h}x{w}",
                engine="torch eager",
                level="-",
                threads=n,
                best=min(t_torch),
                median=statistics.median(t_torch),
                diff=0.0,
                export_s=export_s,
            )
        )
        for (engine, onnx_path), level in [(e, lv) for e in engines for lv in levels]:
            sess = ort.InferenceSession(
                str(onnx_path), sess_options=session_options(level, n, 1), providers=["CPUExecutionProvider"]
            )
            t_ort = _timed(lambda s=sess: s.run(list(OUTPUT_NAMES), feed), runs)
            got = sess.run(list(OUTPUT_NAMES), feed)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
            rows.append(
                dict(
                    variant=name,
                    size=f"{h}x{w}",
                    engine=engine,
                    level=level,
                    threads=n,
                    best=min(t_ort),
                    median=statistics.median(t_ort),
                    diff=diff,
                    export_s=export_s,
                )
            )
            del sess
    return rows


def interleaved(
    name: str, size: tuple[int, int], threads: int, rounds: int, out_dir: Path
) -> list[tuple[float, float]]:
    """torch and ORT (level all) run alternately, so both see the same background load."""
    import onnxruntime as ort

    from xscreen.inference.onnx_backend import session_options
    from xscreen.model import build_detector
    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx

    h, w = size
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    det = build_detector(name).eval()
    path = export_onnx(det, out_dir / f"{name}-interleaved.onnx", name=name, version="bench", sha256="0" * 64)
    sess = ort.InferenceSession(
        str(path), sess_options=session_options("all", threads, 1), providers=["CPUExecutionProvider"]
    )
    batch = torch.randn(1, 3, h, w)
    feed = {INPUT_NAME: batch.numpy()}

    def run_torch():
        with torch.inference_mode():
            det.forward_raw(batch)

    run_torch()
    sess.run(list(OUTPUT_NAMES), feed)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run_torch()
        t1 = time.perf_counter()
        sess.run(list(OUTPUT_NAMES), feed)
        out.append((t1 - t0, time.perf_counter() - t1))
    return out


def markdown(rows: list[dict]) -> str:
    torch_best = {
        (r["variant"], r["size"], r["threads"]): r["best"] for r in rows if r["engine"] == "torch eager"
    }
    header = ("variant", "input", "engine", "graph opt", "threads", "best s", "median s", "speed-up")
    cells = [
        [r["variant"], r["size"], r["engine"], r["level"], r["threads"]]
        + [f"{r['best']:.3f}", f"{r['median']:.3f}"]
        + [f"{torch_best[(r['variant'], r['size'], r['threads'])] / r['best']:.2f}x", f"{r['diff']:.1e}"]
        for r in rows
    ]
    return markdown_table((*header, "max abs diff"), cells, align="llllrrrrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variants", type=variant_list, default=DEFAULT_VARIANTS, help="comma-separated NAME[@HxW]"
    )
    p.add_argument(
        "--threads",
        type=int_list(1),
        default=None,
        help="comma-separated intra-op thread counts (default: 1,ncpu)",
    )
    p.add_argument(
        "--levels",
        type=choice_list(GRAPH_OPTIMIZATION_LEVELS),
        default="basic,extended,all",
        help="ORT graph optimisations",
    )
    p.add_argument("--runs", type=positive_int, default=3)
    p.add_argument(
        "--int8", action="store_true", help="also time the static int8 export (model.onnx_quantize)"
    )
    p.add_argument("--out-dir", type=Path, default=None, help="keep the exported .onnx files here")
    p.add_argument(
        "--interleaved",
        type=non_negative_int,
        default=0,
        metavar="ROUNDS",
        help="instead: alternate torch and ORT (all) ROUNDS times per variant at the first thread count",
    )
    args = p.parse_args(argv)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or sorted({1, ncpu})
    levels, specs = args.levels, args.variants
    rows = []
    if args.interleaved:
        with tempfile.TemporaryDirectory() as tmp:
            print(
                "| variant | threads | round | torch s | ORT s | speed-up |\n|---|---:|---:|---:|---:|---:|"
            )
            for name, size in specs:
                for i, (a, b) in enumerate(interleaved(name, size, threads[0], args.interleaved, Path(tmp))):
                    label = f"{name} {size[0]}x{size[1]}"
                    print(f"| {label} | {threads[0]} | {i} | {a:.3f} | {b:.3f} | {a / b:.2f}x |", flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        for name, size in specs:
            rows += bench_variant(name, size, threads, levels, args.runs, out_dir, args.int8)
            print(f"# {name}: exported in {rows[-1]['export_s']:.1f} s", flush=True)
    print(
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {ncpu} CPU(s), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
