"""Could the exported graph run faster in ONNX Runtime on CPU? Alternatives to its 3x3 convolutions, measured.

The exported ATSS+LA graph spends most of its ORT time in 3x3 convolutions (docs/onnx.md), and
ORT's direct fp32 Conv runs about as fast as torch's, so the ORT-vs-torch speed-up is capped near 1.
This script measures, for one head convolution, what the two usual ways round that would give:

- ``winograd-nchw`` / ``winograd-nhwc``: Winograd F(2x2, 3x3) (Lavin & Gray 2016) written as ONNX
  operators (strided Slice + Add/Sub input and output transforms around one batched MatMul that does
  16 multiplications per 2x2 output tile instead of 36), in channel-first and channel-last layout;
- ``fp16``: the convolution exported in half precision (ORT's CPU provider runs fp16 Conv);
- ``int8-qdq``: onnxruntime.quantization's static int8 quantisation (QDQ, per-channel weights).

and then the whole small_lacls graph quantised to int8 (Conv only) against fp32 ORT: as
``xscreen export --int8`` does it (model/onnx_quantize.py), and without ORT's ``quant_pre_process``.
Every row prints its largest difference from the fp32 result, because only an exact-enough
alternative could replace the fp32 export (docs/onnx.md: scores within 1e-3 of torch).

    python benchmarks/onnx_conv_alternatives.py [--channels 256] [--size 100x167] [--threads 1,2]
        [--runs 5] [--full-model small_lacls@512x512 | --full-model none]

Defaults: the R-50 head's P3 level at 800x1333 (256 channels, 100x167 cells).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from onnx_vs_torch import _timed, parse_variant
from torch import Tensor, nn

from xscreen.argtypes import int_list, positive_int, size_pair
from xscreen.tables import markdown_table

# Winograd F(2x2, 3x3) matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
# Y = A^T [(G g G^T) * (B^T d B)] A on 4x4 input tiles d taken with stride 2.
_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _bt(r: list[Tensor]) -> list[Tensor]:
    """B^T applied along one axis to the four tile rows/columns r0..r3."""
    return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]


def _at(m: list[Tensor]) -> list[Tensor]:
    """A^T applied along one axis: four transformed rows -> two output rows."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


class WinogradConv(nn.Module):
    """A stride-1, padding-1 3x3 Conv2d as Winograd F(2x2, 3x3) in plain ONNX-exportable operators.

    ``channels_last``: input/output [N, H, W, C] and the MatMul's constant operand on the right
    (ORT can pre-pack it); otherwise [N, C, H, W] with the constant on the left.
    """

    def __init__(self, conv: nn.Conv2d, channels_last: bool):
        super().__init__()
        u = torch.einsum("ai,kcij,bj->abkc", _G, conv.weight.detach().double(), _G)  # [4, 4, K, C]
        k, c = conv.weight.shape[:2]
        u = u.reshape(16, k, c)
        self.channels_last = channels_last
        self.register_buffer("u", (u.transpose(1, 2) if channels_last else u).float().contiguous())
        self.register_buffer("bias", conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            n, h, w, c = x.shape
            hdim, wdim = 1, 2
        else:
            n, c, h, w = x.shape
            hdim, wdim = 2, 3
        th, tw = (h + 1) // 2, (w + 1) // 2
        pad = [1, 1 + 2 * tw - w, 1, 1 + 2 * th - h]  # zero border, plus one row/column if odd
        xp = F.pad(x, [0, 0] + pad if self.channels_last else pad)

        def taps(t: Tensor, dim: int, count: int) -> list[Tensor]:  # every 2nd row/column from 0..3
            step = (slice(None),) * dim + (slice(None, None, 2),)
            return [t.narrow(dim, a, 2 * count - 1)[step] for a in range(4)]

        tiles = []
        for t in _bt(taps(xp, hdim, th)):
            tiles.extend(_bt(taps(t, wdim, tw)))
        if self.channels_last:
            v = torch.stack(tiles, dim=0).reshape(16, n * th * tw, c)
            m = torch.matmul(v, self.u).reshape(4, 4, n * th * tw, -1)  # [4, 4, T, K]
            slot = 0
        else:
            v = torch.stack(tiles, dim=1).reshape(n, 16, c, th * tw)
            m = torch.matmul(self.u, v).reshape(n, 4, 4, -1, th * tw)  # [N, 4, 4, K, T]
            slot = 1
        k = self.bias.shape[0]
        out = []
        for s in _at([m.select(slot, a) for a in range(4)]):
            out.extend(_at([s.select(slot, b) for b in range(4)]))  # y00, y01, y10, y11 of every tile
        y = torch.stack(out, dim=0)
        if self.channels_last:  # [4, T, K] -> [N, H, W, K]
            y = y.reshape(2, 2, n, th, tw, k).permute(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, k)
            return y[:, :h, :w] + self.bias
        y = y.reshape(2, 2, n, k, th, tw).permute(2, 3, 4, 0, 5, 1).reshape(n, k, 2 * th, 2 * tw)
        return y[:, :, :h, :w] + self.bias.view(1, -1, 1, 1)


def _export(module: nn.Module, example: Tensor, path: Path, spatial: tuple[int, int]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", spatial[0]: "h", spatial[1]: "w"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from xscreen.inference.onnx_backend import session_options

    opts = session_options("all", threads, 1)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def conv_rows(channels: int, size: tuple[int, int], threads: list[int], runs: int, tmp: Path) -> list[dict]:
    from xscreen.model.onnx_quantize import quantize_int8

    h, w = size
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval()
    x = torch.randn(1, channels, h, w)
    x_last = x.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        ref = conv(x).numpy()
    paths = {
        "ORT Conv fp32 (as exported)": (
            _export(conv, x[..., :64, :96], tmp / "direct.onnx", (2, 3)),
            x,
            False,
        ),
        "ORT winograd-nchw fp32": (
            _export(WinogradConv(conv, False), x[..., :64, :96], tmp / "wnchw.onnx", (2, 3)),
            x,
            False,
        ),
        "ORT winograd-nhwc fp32": (
            _export(WinogradConv(conv, True), x_last[:, :64, :96], tmp / "wnhwc.onnx", (1, 2)),
            x_last,
            True,
        ),
    }
    half = copy.deepcopy(conv).half()
    paths["ORT Conv fp16"] = (
        _export(half, x[..., :64, :96].half(), tmp / "fp16.onnx", (2, 3)),
        x.half(),
        False,
    )
    calib = [np.random.default_rng(i).standard_normal(x.shape).astype(np.float32) for i in range(2)]
    q8 = quantize_int8(tmp / "direct.onnx", tmp / "q8.onnx", calib, input_name="x", pre_process=False)
    paths["ORT int8-qdq"] = (q8, x, False)
    rows = []
    for n in threads:
        torch.set_num_threads(n)

        def run_torch():
            with torch.inference_mode():
                conv(x)

        t = _timed(run_torch, runs)
        rows.append(dict(case="torch eager Conv2d fp32", threads=n, times=t, diff=0.0))
        for case, (path, inp, last) in paths.items():
            sess = _session(path, n)
            feed = {"x": inp.numpy()}
            t = _timed(lambda s=sess, f=feed: s.run(None, f), runs)
            y = sess.run(None, feed)[0].astype(np.float32)
            if last:
                y = y.transpose(0, 3, 1, 2)
            rows.append(dict(case=case, threads=n, times=t, diff=float(np.abs(y - ref).max())))
    return rows


def full_model_rows(
    spec: tuple[str, tuple[int, int]], threads: list[int], runs: int, tmp: Path
) -> list[dict]:
    """fp32 vs int8 for a whole graph: as `xscreen export --int8` writes it, and without ORT's pre-pass."""
    from xscreen.model import build_detector
    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
    from xscreen.model.onnx_quantize import quantize_int8

    name, (h, w) = spec
    torch.manual_seed(0)
    det = build_detector(name).eval()
    fp32 = export_onnx(det, tmp / f"{name}.onnx", name=name, version="bench", sha256="0" * 64)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, h, w)).astype(np.float32) for _ in range(2)]
    int8 = quantize_int8(fp32, tmp / f"{name}-int8.onnx", calib)  # with ORT's quant_pre_process
    int8_raw = quantize_int8(fp32, tmp / f"{name}-int8-nopre.onnx", calib, pre_process=False)  # without it
    feed = {INPUT_NAME: rng.standard_normal((1, 3, h, w)).astype(np.float32)}
    label = f"{name}@{h}x{w} ORT"
    cases = (
        (f"{label} fp32", fp32),
        (f"{label} int8 (xscreen export --int8)", int8),
        (f"{label} int8 without quant_pre_process", int8_raw),
    )
    rows = []
    for n in threads:
        ref = None
        for case, path in cases:
            sess = _session(path, n)
            t = _timed(lambda s=sess: s.run(list(OUTPUT_NAMES), feed), runs)
            out = sess.run(list(OUTPUT_NAMES), feed)
            ref = out if ref is None else ref
            diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, out, strict=True))
            rows.append(dict(case=case, threads=n, times=t, diff=diff))
    return rows


def markdown(rows: list[dict], baseline_prefix: str) -> str:
    base = {}
    for r in rows:
        if r["case"].startswith(baseline_prefix):
            base.setdefault(r["threads"], min(r["times"]))
    cells = []
    for r in rows:
        best = min(r["times"])
        cells.append(
            [
                r["case"],
                r["threads"],
                f"{best * 1e3:.1f}",
                f"{statistics.median(r['times']) * 1e3:.1f}",
                f"{base[r['threads']] / best:.2f}x",
                f"{r['diff']:.1e}",
            ]
        )
    return markdown_table(("case", "threads", "best ms", "median ms", "vs first row", "max abs diff"), cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=positive_int, default=256, help="conv in/out channels (R-50 head: 256)")
    p.add_argument(
        "--size",
        type=size_pair(2, "HEIGHTxWIDTH such as 100x167"),
        default=(100, 167),
        help="feature map HxW (R-50 P3 at 800x1333: 100x167)",
    )
    p.add_argument(
        "--threads", type=int_list(1), default=None, help="comma-separated intra-op threads (default: 1,ncpu)"
    )
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument(
        "--full-model",
        type=lambda s: None if s == "none" else parse_variant(s),
        default="small_lacls@512x512",
        help="NAME@HxW to quantise whole, or none",
    )
    args = p.parse_args(argv)
    h, w = args.size
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or sorted({1, ncpu})
    with tempfile.TemporaryDirectory() as tmp:
        rows = conv_rows(args.channels, (h, w), threads, args.runs, Path(tmp))
        model_rows = (
            [] if args.full_model is None else full_model_rows(args.full_model, threads, args.runs, Path(tmp))
        )
    print(
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {ncpu} CPU(s), "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        f"One 3x3 conv, {args.channels} -> {args.channels} channels on {h}x{w} (speed-up vs torch eager):\n"
    )
    print(markdown(rows, "torch eager"))
    if model_rows:
        print(
            f"\nThe whole {model_rows[0]['case'].split()[0]} graph, random weights, Conv quantised"
            " (speed-up vs ORT fp32):\n"
        )
        print(markdown(model_rows, model_rows[0]["case"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
