"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check on CPU at toy size, results under $OUT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.setdefault("OMP_NUM_THREADS", "2")  # a pytest-xdist worker sets its share of the cores
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=590,
    )  # fmt: skip
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, summary[-4000:] + proc.stderr[-2000:]
    steps = re.findall(r"^## (\S+) \(exit (\d+), \d+s\)$", summary, re.M)
    names = [n for n, _ in steps]
    assert names == [
        "env", "cuda_tests", "latency_fp32_b1", "latency_fp32_b2", "latency_bf16_b1", "latency_bf16_b2",
        "onnx_cuda", "synth", "train", "threshold", "eval_test", "detect_ap", "detect_ap_bundled",
        "service_load",
    ]  # fmt: skip
    assert all(rc == "0" for _, rc in steps) and "## failed steps: none" in summary
    # the latency tables carry torchvision's FCOS beside our detectors, in both precisions and batch sizes
    assert summary.count("| FCOS R-50 (torchvision) (fcos) |") == 4 and "batch 2, bf16" in summary
    assert "score_threshold" in summary and "AP through POST /detect" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        members = set(tar.getnames())
    assert {"results/operating_point.png", "results/detect_ap.json", "results/train/curves.png"} <= members
    assert "results/detect_ap_bundled.json" in members  # the bundled file, for comparison
    # the demo recipe: fine-tuned from the bundled weights, its threshold picked by best F2
    assert "starting from model/weights/xscreen-small-lacls.safetensors" in summary
    assert "rule best-f2 on val" in summary
    parts = sorted(out.glob("weights.safetensors.part-*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    joined = tmp_path / "w.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    from xscreen.model.weights import load_weights

    _, info = load_weights(joined)
    assert info.operating_point is not None and info.operating_point["split"] == "val"
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
