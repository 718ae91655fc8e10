"""Pseudo-colour rendering (material colours), box drawing and the `xscreen render` command."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from xscreen.cli import main
from xscreen.model.classes import CLASS_NAMES
from xscreen.scans import ScanError, write_raw_png
from xscreen.scans.picture import draw_detections, pseudo_colour
from xscreen.training.synth.physics import COEF, expose
from xscreen.training.synth.writer import SynthConfig, write_dataset


def test_materials_get_scanner_colours():
    depth = np.zeros((60, 200, 2), np.float32)
    depth[:, 50:100] = COEF["organic"] * 6.0  # orange
    depth[:, 100:150] = COEF["aluminium"] * 1.5  # green
    depth[:, 150:200] = COEF["steel"] * 0.3  # blue
    high, low = expose(depth, np.random.default_rng(0))
    rgb = pseudo_colour(high, low).astype(float)
    assert rgb.dtype == np.float64 and rgb.shape == (60, 200, 3)
    air, org, alu, steel = (rgb[10:50, a + 8 : a + 42].mean((0, 1)) for a in (0, 50, 100, 150))
    assert air.min() > 225  # air stays (nearly) white
    assert org[0] > org[1] > org[2] and org[0] - org[2] > 80  # orange: R > G > B
    assert alu[1] > alu[0] and alu[1] > alu[2]  # green dominates
    assert steel[2] > steel[0] + 60 and steel[2] > steel[1]  # blue dominates


def test_draw_detections_draws_on_a_copy():
    rgb = np.full((100, 120, 3), 255, np.uint8)
    out = draw_detections(rgb, [[10, 20, 60, 80]], [2], [0.87], CLASS_NAMES)
    assert (rgb == 255).all()  # input untouched
    assert (out[50, 10] != 255).any() and (out[79, 35] != 255).any()  # left and bottom edges drawn
    assert (out[50, 35] == 255).all()  # inside stays clear
    assert (out[:20, 10:60] != 255).any()  # the "knife 0.87" label above the box
    empty = draw_detections(rgb, np.zeros((0, 4)), [], None, CLASS_NAMES)
    assert (empty == rgb).all()


def test_pseudo_colour_rejects_mismatched_pair():
    with pytest.raises(ScanError, match="size mismatch"):
        pseudo_colour(np.zeros((4, 5), np.uint16), np.zeros((5, 4), np.uint16))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write_dataset(
        SynthConfig(images=3, seed=4, height=160, width=192, splits=(0, 0, 1)), root, progress=False
    )
    return root


def test_render_cli_ground_truth_and_detections(dataset, tmp_path, capsys):
    coco = json.loads((dataset / "annotations" / "test.json").read_text())
    im = next(i for i in coco["images"] if any(a["image_id"] == i["id"] for a in coco["annotations"]))
    high, low = dataset / im["raw_high"], dataset / im["raw_low"]
    n_boxes = sum(a["image_id"] == im["id"] for a in coco["annotations"])
    args = ["render", "--high", str(high), "--low", str(low)]
    assert main([*args, "--out", str(tmp_path / "plain.png")]) == 0
    assert (
        main(
            [
                *args,
                "--out",
                str(tmp_path / "gt.png"),
                "--annotations",
                str(dataset / "annotations" / "test.json"),
                "--image-id",
                str(im["id"]),
            ]
        )
        == 0
    )
    assert f"{n_boxes} boxes" in capsys.readouterr().out
    plain, gt = cv2.imread(str(tmp_path / "plain.png")), cv2.imread(str(tmp_path / "gt.png"))
    assert plain.shape == gt.shape == (160, 192, 3)
    a = coco["annotations"][[x["image_id"] for x in coco["annotations"]].index(im["id"])]
    x, y = int(a["bbox"][0]), int(a["bbox"][1] + a["bbox"][3] / 2)
    assert (plain[y, x] != gt[y, x]).any()  # the box's left edge is drawn
    dets = [
        {"image_id": im["id"], "category_id": 8, "bbox": [5, 5, 40, 30], "score": 0.9},
        {"image_id": im["id"], "category_id": 8, "bbox": [50, 50, 40, 30], "score": 0.1},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main([*args, "--out", str(tmp_path / "d.png"), "--detections", str(tmp_path / "dets.json")]) == 0
    assert "1 boxes" in capsys.readouterr().out  # the 0.1 detection is under --score-thresh


def test_render_cli_bad_inputs(dataset, tmp_path, capsys):
    coco = json.loads((dataset / "annotations" / "test.json").read_text())
    im = coco["images"][0]
    high, low = str(dataset / im["raw_high"]), str(dataset / im["raw_low"])
    ann = str(dataset / "annotations" / "test.json")
    small = tmp_path / "small.png"
    write_raw_png(small, np.zeros((10, 10), np.uint16))
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), np.zeros((10, 10), np.uint8))
    cases = [
        (
            ["--high", high, "--low", low, "--out", "o.png", "--annotations", ann],
            "--annotations needs --image-id",
        ),
        (
            ["--high", high, "--low", low, "--out", "o.png", "--annotations", ann, "--image-id", "999"],
            "no image with id 999",
        ),
        (["--high", high, "--low", str(small), "--out", "o.png"], "high/low size mismatch"),
        (["--high", str(eight), "--low", low, "--out", "o.png"], "PNG is 8-bit"),
        (["--high", high, "--low", low, "--out", str(tmp_path / "o.gif")], "--out must end in .png or .jpg"),
        (
            ["--high", high, "--low", low, "--out", "o.png", "--detections", "nope.json"],
            "detections file not found",
        ),
    ]
    for extra, message in cases:
        assert main(["render", *extra]) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_render_cli_with_weights(dataset, tmp_path, capsys):
    from xscreen.model import build_detector
    from xscreen.model.config import load_config
    from xscreen.model.weights import save_weights

    cfg = load_config("small_atss").with_overrides(min_size=160, max_size=192, score_thresh=0.0, max_dets=5)
    save_weights(build_detector(cfg), tmp_path / "w.safetensors")
    im = json.loads((dataset / "annotations" / "test.json").read_text())["images"][0]
    args = ["render", "--high", str(dataset / im["raw_high"]), "--low", str(dataset / im["raw_low"])]
    out = tmp_path / "pred.png"
    assert (
        main([*args, "--out", str(out), "--weights", str(tmp_path / "w.safetensors"), "--score-thresh", "0"])
        == 0
    )
    assert "(192x160, 5 boxes)" in capsys.readouterr().out
    assert cv2.imread(str(out)).shape == (160, 192, 3)


def test_render_cli_from_a_converted_image(dataset, tmp_path, capsys):
    coco = json.loads((dataset / "annotations" / "test.json").read_text())
    im = coco["images"][0]
    conv = str(dataset / "images" / "test" / im["file_name"])
    ann = str(dataset / "annotations" / "test.json")
    out = tmp_path / "c.png"
    assert (
        main(
            [
                "render",
                "--converted",
                conv,
                "--out",
                str(out),
                "--annotations",
                ann,
                "--image-id",
                str(im["id"]),
            ]
        )
        == 0
    )
    from_raw = tmp_path / "r.png"
    raw = ["--high", str(dataset / im["raw_high"]), "--low", str(dataset / im["raw_low"])]
    assert (
        main(["render", *raw, "--out", str(from_raw), "--annotations", ann, "--image-id", str(im["id"])]) == 0
    )
    a, b = cv2.imread(str(out)).astype(int), cv2.imread(str(from_raw)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3.0  # same picture up to 8-bit quantisation
    assert main(["render", "--converted", conv, *raw, "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["render", "--out", str(out)]) == 2
    assert "--high and --low (raw scans) or --converted" in capsys.readouterr().err
