"""benchmarks/detect_ap.py at toy size: fresh synthetic scans through a real server, AP per threshold.

The served weights are the bundled demo model with its threshold set to 0.05, so the row at the
model's own threshold must equal the client's 0.05 row exactly, and a client threshold of 1.0 keeps
no detection (AP 0). The figures must be what training.evaluate gives for the same detections."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xscreen.inference.settings import bundled_weights_path
from xscreen.model.weights import set_operating_point

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "detect_ap.py"

pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow  # synth, a server, COCO AP
def test_detect_ap_prints_the_table_at_the_models_threshold_and_the_clients(tmp_path):
    weights = tmp_path / "w.safetensors"
    set_operating_point(bundled_weights_path(), weights, {"score_threshold": 0.05, "rule": "manual"})
    args = ["--weights", str(weights), "--images", "4", "--size", "256x256", "--seed", "7"]
    args += ["--thresholds", "0.05,1", "--device", "cpu", "--json", str(tmp_path / "ap.json")]
    args += ["--keep", str(tmp_path / "work")]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(
        r"^\| (model's own|client) +\| +([\d.]+) \| +(\d+) \| +([\d.]+|n/a) \|", proc.stdout, re.M
    )
    assert [r[:2] for r in rows] == [("model's own", "0.05"), ("client", "0.05"), ("client", "1")], (
        proc.stdout
    )
    assert rows[0][2:] == rows[1][2:] and int(rows[0][2]) > 0 and rows[2][2:] == ("0", "0.0")
    report = json.loads((tmp_path / "ap.json").read_text())
    assert report["images"] == 4 and report["size"] == "256x256" and report["seed"] == 7
    own = report["rows"][0]
    assert f"{100 * own['AP50']:.1f}" == rows[0][3] and own["detections"] == int(rows[0][2])
    # the scans are `xscreen synth`'s: the same seed and size give the same ground truth
    gt = json.loads((tmp_path / "work" / "scans" / "annotations" / "test.json").read_text())
    assert len(gt["images"]) == 4 and report["objects"] == len(gt["annotations"]) > 0
    assert "challenging AP50 (" in proc.stdout
