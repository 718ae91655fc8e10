"""Every benchmark script answers a bad flag with a usage message and exit status 2, before any work."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

CASES = [
    ("synth_speed", ["--size", "big"], "expected WIDTHxHEIGHT such as 640x640, got 'big'"),
    ("synth_speed", ["--size", "64x640"], "each side must be >= 128"),
    ("synth_speed", ["--images", "0"], "argument --images: must be >= 1, got 0"),
    ("synth_speed", ["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    ("onnx_vs_torch", ["--variants", "small_lacls@abc"], "expected NAME@HEIGHTxWIDTH"),
    ("onnx_vs_torch", ["--variants", "nope"], "unknown detector config 'nope'"),
    ("onnx_vs_torch", ["--variants", ","], "expected comma-separated NAME[@HxW]"),
    ("onnx_vs_torch", ["--threads", "x"], "argument --threads: expected a whole number, got 'x'"),
    ("onnx_vs_torch", ["--runs", "0"], "argument --runs: must be >= 1, got 0"),
    ("onnx_vs_torch", ["--levels", "bogus"], "expected a comma list of disable, basic, extended, all"),
    ("onnx_vs_torch", ["--interleaved", "-1"], "argument --interleaved: must be >= 0, got -1"),
    ("onnx_conv_alternatives", ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("onnx_conv_alternatives", ["--channels", "0"], "argument --channels: must be >= 1, got 0"),
    ("onnx_conv_alternatives", ["--size", "1x5"], "each side must be >= 2"),
    ("onnx_conv_alternatives", ["--full-model", "foo@64x64"], "unknown detector config 'foo'"),
    ("onnx_conv_alternatives", ["--full-model", "small_lacls@1x"], "expected NAME@HEIGHTxWIDTH"),
    ("model_latency", ["--runs", "1"], "argument --runs: must be >= 3, got 1"),
    ("model_latency", ["--size", "16x16"], "each side must be >= 32"),
    ("model_latency", ["--device", "bogus"], "argument --device: invalid choice: 'bogus'"),
    ("png_decode", ["--sizes", "1"], "argument --sizes: must be >= 2, got 1"),
    ("png_decode", ["--runs", "0"], "argument --runs: must be >= 1, got 0"),
    ("service_load", ["--requests", "0"], "argument --requests: must be >= 1, got 0"),
    ("service_load", ["--size", "0"], "argument --size: must be >= 128, got 0"),
    ("service_load", ["--concurrency", "1,0"], "argument --concurrency: must be >= 1, got 0"),
    ("service_load", ["--scans", "0"], "argument --scans: must be >= 1, got 0"),
    ("service_load", ["--model-runs", "0"], "argument --model-runs: must be >= 1, got 0"),
    (
        "service_load",
        ["--max-queue-delay-ms", "-1"],
        "--max-queue-delay-ms: Input should be greater than or equal to 0",
    ),
    (
        "service_load",
        ["--max-queue-delay-ms", "nan"],
        "--max-queue-delay-ms: Input should be less than or equal to 10000",
    ),
    (
        "service_load",
        ["--max-batch-size", "65"],
        "--max-batch-size: Input should be less than or equal to 64",
    ),
    ("service_load", ["--max-batch-size", "x"], "--max-batch-size: Input should be a valid integer"),
]
if not torch.cuda.is_available():  # with a GPU, 'cuda' is a valid choice and the benchmark would run
    CASES.append(("model_latency", ["--device", "cuda"], "no CUDA device is available"))


@pytest.mark.parametrize("script, argv, message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_flag_is_a_usage_error(script, argv, message, capsys):
    main = importlib.import_module(script).main
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert message in err and "Traceback" not in err
