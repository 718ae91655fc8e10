"""`make demo-model` end to end at toy size: both stages, the fp16 copy, the threshold, and a rerun that
skips what is done and resumes the rest (the recipe of model/weights/MODEL_CARD.md, not its scale)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from xscreen.model.weights import load_weights, read_header

ROOT = Path(__file__).resolve().parents[2]
TOY = [
    "DEMO_SYNTH_ARGS=--images 50 --size 160x160",
    "DEMO_STAGE1_ARGS=--epochs 1 --lr 0.02 --max-iters 1",
    "DEMO_STAGE2_ARGS=--epochs 1 --max-iters 2",
    "DEMO_TRAIN_ARGS=--device cpu --workers 0 --batch-size 1",  # after the recipe's --batch-size 4: wins
    "DEMO_VERSION=9.9.9",
]


def _make(demo: Path) -> str:
    # -o: take the installed venv as up to date (the suite already runs in it; never reinstall here)
    cmd = ["make", "-s", "--no-print-directory", "-o", ".venv/.installed", "demo-model", f"DEMO={demo}", *TOY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow  # ~45-60 s: two `make demo-model` runs, nine xscreen processes
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "xscreen").exists(), reason="needs the repo's .venv")
def test_demo_model_recipe_runs_both_stages_and_resumes(tmp_path):
    demo = tmp_path / "demo"
    out = _make(demo)
    assert "wrote 50 scans (160x160)" in out
    stage1 = demo / "stage1.safetensors"
    final = demo / "xscreen-small-lacls.safetensors"
    _, s1 = load_weights(stage1)
    model, info = load_weights(final)
    assert s1.version == "0.3.0" and info.version == "9.9.9"
    tensors = load_file(str(final))  # the bundled copy is fp16
    assert {str(t.dtype) for t in tensors.values() if t.is_floating_point()} == {"torch.float16"}
    # stage 2 started from stage 1's weights, and the threshold step recorded its rule
    assert info.metadata["run"]["init_weights"]["sha256"] == s1.sha256
    assert info.metadata["run"]["epochs"] == 1 and info.metadata["iteration"] == 2
    assert '"rule": "best-f2"' in read_header(final)["operating_point"]
    assert (demo / "operating_point.png").stat().st_size > 1000

    # A rerun: the set and stage 1 exist (skipped), stage 2 continues its own run with --resume.
    before = stage1.read_bytes()
    again = _make(demo)
    assert "wrote 50 scans" not in again and "trained 1 iterations" not in again
    assert f"resuming {demo / 'finetune'} at iteration 2" in again
    assert stage1.read_bytes() == before
    assert load_weights(final)[1].metadata["run"]["init_weights"]["sha256"] == s1.sha256
