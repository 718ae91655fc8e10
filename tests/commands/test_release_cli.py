"""`xscreen release`: the shipped copy of weights is fp16 (or fp32 on request), carries the given version and
name, keeps the config and the operating point, and its printed sha256 is the one the loader computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from xscreen.cli import main as xscreen_main
from xscreen.model import build_detector, load_config, load_weights, save_weights
from xscreen.model.weights import read_header

OP = {"score_threshold": 0.2, "rule": "best-f2", "split": "val", "precision": 0.5, "recall": 0.8, "f1": 0.6}


@pytest.fixture(scope="module")
def run_weights(tmp_path_factory):
    """What a training run leaves: fp32 tensors, the config's name, xscreen's version, a picked threshold."""
    tmp = tmp_path_factory.mktemp("release")
    small = {"fpn_channels": 64, "stacked_convs": 1, "min_size": 96, "max_size": 96}
    cfg = load_config("small_lacls").with_overrides(**small)
    torch.manual_seed(0)
    det = build_detector(cfg).eval()
    src = tmp / "last.safetensors"
    sha = save_weights(det, src, metadata={"epoch": 3, "data": "synthetic"}, operating_point=OP)
    return det, src, sha, tmp


def _dtypes(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def test_release_writes_fp16_with_version_name_threshold_and_its_sha(run_weights, capsys):
    det, src, src_sha, tmp = run_weights
    out = tmp / "dist" / "site-lacls.safetensors"
    args = ["release", str(src), "--out", str(out), "--version", "1.2.0", "--name", "site-lacls"]
    assert xscreen_main(args) == 0
    printed = capsys.readouterr().out
    header = read_header(out)
    assert header["version"] == "1.2.0" and header["name"] == "site-lacls"
    meta = {"epoch": 3, "data": "synthetic", "name": "site-lacls", "version": "1.2.0"}
    assert json.loads(header["metadata"]) == meta
    assert header["config"] == det.cfg.to_json()
    assert _dtypes(src) >= {"F32"} and "F32" not in _dtypes(out) and "F16" in _dtypes(out)
    assert out.stat().st_size < 0.6 * src.stat().st_size
    model, info = load_weights(out)
    assert info.operating_point == OP and info.version == "1.2.0" and info.name == "site-lacls"
    assert info.sha256 != src_sha and f"sha256 of the tensors: {info.sha256}" in printed
    assert f"({out.stat().st_size} bytes, fp16): site-lacls 1.2.0" in printed
    assert "score_threshold 0.2 (rule best-f2 on val" in printed
    # loaded back in fp32, the fp16 copy predicts what the run's weights predict, up to fp16 rounding
    batch = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a, b = det.forward_raw(batch).cls_logits, model.forward_raw(batch).cls_logits
    assert 0 < float((a - b).abs().max()) < 0.05


def test_fp32_release_keeps_the_tensors_and_the_name(run_weights, capsys):
    det, src, src_sha, tmp = run_weights
    out = tmp / "fp32.safetensors"
    assert xscreen_main(["release", str(src), "--out", str(out), "--version", "2.0.0-rc1", "--fp32"]) == 0
    _, info = load_weights(out)
    assert info.sha256 == src_sha and info.name == det.cfg.name and info.version == "2.0.0-rc1"
    assert "fp32" in capsys.readouterr().out
    # in place: --out may be the file itself
    assert xscreen_main(["release", str(out), "--out", str(out), "--version", "2.0.0"]) == 0
    assert load_weights(out)[1].version == "2.0.0" and "F32" not in _dtypes(out)


def test_release_refuses_bad_input_with_one_line(run_weights, capsys):
    _, src, _, tmp = run_weights
    missing = tmp / "missing.safetensors"
    assert xscreen_main(["release", str(missing), "--out", str(tmp / "o"), "--version", "1"]) == 2
    assert "weights file not found" in capsys.readouterr().err
    junk = tmp / "junk.safetensors"
    junk.write_text("not weights")
    assert xscreen_main(["release", str(junk), "--out", str(tmp / "o"), "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "junk.safetensors" in err and "Traceback" not in err
    assert xscreen_main(["release", str(src), "--out", str(tmp), "--version", "1"]) == 2
    assert "is a directory" in capsys.readouterr().err
    under_a_file = tmp / "junk.safetensors" / "r.safetensors"  # parent is a file: unwritable even as root
    assert xscreen_main(["release", str(src), "--out", str(under_a_file), "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write --out" in err and "Traceback" not in err
    for bad in ["", "1 2", "-1", "x" * 65, "1.0/evil"]:
        with pytest.raises(SystemExit) as exc:
            xscreen_main(["release", str(src), "--out", str(tmp / "o"), "--version", bad])
        assert exc.value.code == 2 and "--version must be 1-64 letters" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        xscreen_main(["release", str(src), "--out", str(tmp / "o")])
    assert exc.value.code == 2 and "--version" in capsys.readouterr().err
    assert not (tmp / "o").exists()
