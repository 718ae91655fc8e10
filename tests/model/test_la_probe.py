"""LA label-source analysis: oracle (training) labels at test time, and the probe command's table."""

from __future__ import annotations

import pytest
import torch

from tests.support.train_data import tiny_config, write_tiny_set
from xscreen.cli import main
from xscreen.model import build_detector, load_config, save_weights
from xscreen.model.detector import DetectorInputError


def probe_main(argv):
    return main(["la-probe", *argv])


def _model(coeffs, la_mode="cls"):
    torch.manual_seed(0)
    base = "small_lacls" if la_mode == "cls" else "small_atss"
    cfg = load_config(base).with_overrides(
        min_size=96,
        max_size=96,
        fpn_channels=64,
        stacked_convs=1,
        la_coeffs=coeffs,
        candidate_score_thresh=0.0,
    )
    model = build_detector(cfg).eval()
    with torch.no_grad():  # a head whose gradients are far from zero, so labels visibly matter
        for p in model.head.parameters():
            p.mul_(8.0)
    return model


IMAGE = torch.rand(3, 90, 100) * 255
TARGET = {
    "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 95.0, 85.0]]),
    "labels": torch.tensor([2, 7]),
}


def test_oracle_labels_change_the_answer_only_through_the_reweighting():
    off, strong = _model((1.0, 0.0, 0.0)), _model((1.0, 1e4, 1e4))
    with torch.inference_mode():
        # LA switched off, (a, b, c) = (1, 0, 0): the labels cannot matter, outputs are identical
        a, b = off.predict([IMAGE])[0], off.predict_with_oracle_labels([IMAGE], [TARGET])[0]
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["boxes"], b["boxes"])
        # strong reweighting: pseudo-labels (arg-max) and assigned labels give different features
        a, b = strong.predict([IMAGE])[0], strong.predict_with_oracle_labels([IMAGE], [TARGET])[0]
        assert a["scores"].shape != b["scores"].shape or not torch.allclose(a["scores"], b["scores"])
    with pytest.raises(DetectorInputError, match="need an LA model"):
        _model((1.0, 1.0, 1.0), la_mode="none").predict_with_oracle_labels([IMAGE], [TARGET])
    with pytest.raises(DetectorInputError, match="1 images but 2 targets"):
        off.predict_with_oracle_labels([IMAGE], [TARGET, TARGET])


@pytest.mark.slow  # trains the probe for every LA mode
def test_probe_command_prints_one_row_per_mode(tmp_path, capsys):
    data = write_tiny_set(tmp_path / "data", n_train=2, n_val=4)
    cfg = load_config(str(tiny_config(tmp_path / "cfg.json")))
    torch.manual_seed(0)
    weights = tmp_path / "lacls.safetensors"
    save_weights(build_detector(cfg).eval(), weights)
    out = tmp_path / "probe.json"
    assert probe_main(["--weights", str(weights), "--data", str(data), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| LA labels at test | test mAP | test AP50 | challenging mAP | challenging AP50 |" in text
    for mode in ("pseudo", "oracle", "off"):
        assert f"| {mode} | " in text
    assert "| level | mean abs(w - 0.5) | max abs(w - 0.5) | mean norm(x_new - x) / norm(x) |" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| P")]
    assert [r[0].strip() for r in rows] == ["P3", "P4", "P5", "P6", "P7"]
    for r in rows:  # sigmoid weights: 0 <= |w - 0.5| <= 0.5; the change is a non-negative ratio
        w_mean, w_max, change = (float(v) for v in r[1:])
        assert 0.0 <= w_mean <= w_max <= 0.5 and change >= 0.0
    assert out.is_file() and str(weights) in out.read_text()
    atss = tmp_path / "atss.safetensors"
    save_weights(build_detector(load_config(str(tiny_config(tmp_path / "a.json", "small_atss")))), atss)
    assert probe_main(["--weights", str(atss), "--data", str(data)]) == 2
    assert "an ATSS model without LA has no label source to probe" in capsys.readouterr().err
    assert probe_main(["--weights", str(tmp_path / "none.safetensors"), "--data", str(data)]) == 2
    assert "xscreen la-probe: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        probe_main(["--weights", str(weights), "--data", str(data), "--limit", "0"])
    assert info.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
