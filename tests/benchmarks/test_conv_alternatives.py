"""benchmarks/onnx_conv_alternatives.py: its Winograd convolutions compute the convolution they replace,
and the script prints its table (tiny sizes, so the suite stays fast; timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from onnx_conv_alternatives import WinogradConv

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (2, 3)])
def test_winograd_conv_equals_conv2d(channels_last, size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        ref = conv(x)
        wino = WinogradConv(conv, channels_last)
        got = wino(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if channels_last else wino(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_script_prints_every_case_with_its_difference():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "onnx_conv_alternatives.py"), "--channels", "8", "--size", "9x11",
         "--threads", "1", "--runs", "1", "--full-model", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for case in (
        "torch eager Conv2d fp32",
        "ORT Conv fp32 (as exported)",
        "ORT winograd-nchw fp32",
        "ORT winograd-nhwc fp32",
        "ORT Conv fp16",
        "ORT int8-qdq",
    ):
        assert case in rows, proc.stdout
    diff = lambda case: float(rows[case].rstrip(" |").split("|")[-1])  # noqa: E731
    assert diff("ORT Conv fp32 (as exported)") < 1e-5
    assert diff("ORT winograd-nchw fp32") < 1e-5 and diff("ORT winograd-nhwc fp32") < 1e-5
    assert diff("ORT int8-qdq") > diff("ORT Conv fp32 (as exported)")  # quantisation is not exact


def test_script_refuses_a_bad_size():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "onnx_conv_alternatives.py"), "--size", "big"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "expected HEIGHTxWIDTH such as 100x167" in proc.stderr
