"""benchmarks/onnx_precision.py: ORT fp32 and torch fp32 each against torch float64, at toy size."""

from __future__ import annotations

import importlib
import re

import pytest


def test_prints_every_pair_and_output_and_the_flipped_relus(capsys):
    precision = importlib.import_module("onnx_precision")
    assert precision.main(["--size", "96x128"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (.+ vs .+) \| (\w+) \| (\S+) \| (\S+)% \|$", out, re.M)
    pairs = ["ORT fp32 vs torch fp32", "torch fp32 vs torch float64", "ORT fp32 vs torch float64"]
    assert [(p, o) for p, o, _, _ in rows] == [
        (p, o) for p in pairs for o in ("cls_logits", "bbox_reg", "centerness")
    ]
    diff = {(p, o): float(d) for p, o, d, _ in rows}
    for o in ("cls_logits", "bbox_reg", "centerness"):
        # float64 really ran (fp32 rounding shows), and the three numbers are consistent (triangle inequality)
        assert diff[pairs[1], o] > 0 and diff[pairs[2], o] > 0
        assert diff[pairs[2], o] <= diff[pairs[0], o] + diff[pairs[1], o] + 1e-7
        # whatever flips, the LA loop's outputs stay within a flip's reach (docs/onnx.md): far from broken
        assert diff[pairs[1], o] < 0.05 and diff[pairs[2], o] < 0.05
    assert all(0 <= float(share) <= 100 for *_, share in rows)
    tail = out.split("different sides:")[1]
    assert tail.strip() == "none" or re.search(r"^\| P[3-7] \| [1-9] \| [1-9]\d* \| \S+ \|$", tail, re.M)


def test_bad_size_is_a_usage_error(capsys):
    precision = importlib.import_module("onnx_precision")
    with pytest.raises(SystemExit) as exc:
        precision.main(["--size", "12x12"])
    assert exc.value.code == 2 and "each side must be >= 32" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        precision.main(["--config", "no_such_config"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no detector config 'no_such_config'" in err and "Traceback" not in err
