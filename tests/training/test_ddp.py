"""`xscreen train` under torchrun, 2 CPU processes (gloo): identical weights on both ranks, rank 0 writes."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest

from tests.support.train_data import tiny_config, write_tiny_set
from xscreen.model.weights import load_weights
from xscreen.training.rundir import weights_digest


@pytest.mark.slow  # torchrun with two training processes
def test_two_process_ddp_run_on_cpu(tmp_path):
    data = write_tiny_set(tmp_path / "data", n_train=8, n_val=2)
    cfg = tiny_config(tmp_path / "tiny.json")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "xscreen.cli", "train", "--config", str(cfg), "--data", str(data), "--out", str(out)]
    cmd += ["--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    digests = dict(re.findall(r"rank (\d) final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(digests) == {"0", "1"}, proc.stderr[-2000:]
    assert digests["0"] == digests["1"]
    model, info = load_weights(out / "last.safetensors")
    assert weights_digest(model) == digests["0"]  # the file holds exactly the ranks' common weights

    # 8 images / (2 ranks x 2 per rank) = 2 iterations per epoch; lr scaled to the total batch of 4
    assert info.metadata["run"]["world_size"] == 2 and info.metadata["iteration"] == 4
    with (out / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]  # one writer: no duplicated rows
    assert float(rows[2]["lr"]) == 0.01 * 4 / 8
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        [
            "best.safetensors",
            "config.json",
            "curves.png",
            "last.safetensors",
            "operating_point.png",
            "run.json",
        ]
        + ["tensorboard"]
        + ["train_log.csv", "train_state.safetensors", "val_log.csv"]
    )
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: only rank 0 opened a writer
    assert proc.stdout.count("trained 4 iterations") == 1  # only rank 0 reports
