"""Pseudo-colour rendering (material colours), box drawing and the `xscreen render` command."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from xscreen.cli import main
from xscreen.inference.settings import bundled_weights_path
from xscreen.model.classes import CLASS_NAMES
from xscreen.scans import ScanError, write_raw_png
from xscreen.scans.picture import draw_detections, pseudo_colour
from xscreen.training.synth.physics import COEF, expose
from xscreen.training.synth.writer import SynthConfig, write_dataset

REPO = Path(__file__).resolve().parents[2]
BAG_HIGH, BAG_LOW = REPO / "examples" / "bag_high.png", REPO / "examples" / "bag_low.png"


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


def _first_annotated(dataset):
    coco = json.loads((dataset / "annotations" / "test.json").read_text())
    im = next(i for i in coco["images"] if any(a["image_id"] == i["id"] for a in coco["annotations"]))
    return coco, im


def test_render_cli_ground_truth_finds_the_image_by_file_name_stem_or_id(dataset, tmp_path, capsys):
    coco, im = _first_annotated(dataset)
    high, low = dataset / im["raw_high"], dataset / im["raw_low"]
    n_boxes = sum(a["image_id"] == im["id"] for a in coco["annotations"])
    ann = str(dataset / "annotations" / "test.json")
    args = ["render", "--high", str(high), "--low", str(low)]
    assert main([*args, "--out", str(tmp_path / "plain.png")]) == 0
    stem = Path(im["file_name"]).stem  # synth_00000K, COCO id K + 1
    assert im["id"] == int(stem.rsplit("_", 1)[1]) + 1
    pictures = []
    for pick in ([], ["--image-id", stem], ["--image-id", str(im["id"])]):
        out = tmp_path / f"gt{len(pictures)}.png"
        assert main([*args, "--out", str(out), "--annotations", ann, *pick]) == 0
        assert f"{n_boxes} boxes" in capsys.readouterr().out
        pictures.append(cv2.imread(str(out)))
    plain = cv2.imread(str(tmp_path / "plain.png"))
    assert plain.shape == pictures[0].shape == (160, 192, 3)
    assert all((p == pictures[0]).all() for p in pictures)  # the same image, however it was named
    a = coco["annotations"][[x["image_id"] for x in coco["annotations"]].index(im["id"])]
    x, y = int(a["bbox"][0]), int(a["bbox"][1] + a["bbox"][3] / 2)
    assert (plain[y, x] != pictures[0][y, x]).any()  # the box's left edge is drawn


def test_render_cli_coco_results(dataset, tmp_path, capsys):
    _, im = _first_annotated(dataset)
    args = ["render", "--high", str(dataset / im["raw_high"]), "--low", str(dataset / im["raw_low"])]
    dets = [
        {"image_id": im["id"], "category_id": 8, "bbox": [5, 5, 40, 30], "score": 0.9},
        {"image_id": im["id"], "category_id": 8, "bbox": [50, 50, 40, 30], "score": 0.1},
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    out = ["--out", str(tmp_path / "d.png"), "--detections", str(path)]
    assert main([*args, *out]) == 0
    assert "2 boxes" in capsys.readouterr().out  # a results file is drawn as it is
    assert main([*args, *out, "--score-threshold", "0.5"]) == 0
    assert "1 boxes" in capsys.readouterr().out
    path.write_text(json.dumps([*dets, {**dets[0], "image_id": im["id"] + 1}]))
    assert main([*args, *out]) == 2
    assert "results of 2 images; give --image-id (the COCO image id)" in capsys.readouterr().err
    assert main([*args, *out, "--image-id", str(im["id"] + 1)]) == 0
    assert "1 boxes" in capsys.readouterr().out
    assert main([*args, *out, "--image-id", Path(im["file_name"]).stem]) == 2
    assert "COCO results name images by their COCO id only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bag_answer(tmp_path_factory):
    """`xscreen detect --json` on the sample bag with the bundled weights, saved as a user would."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            main(["detect", "--high", str(BAG_HIGH), "--low", str(BAG_LOW), "--device", "cpu", "--json"]) == 0
        )
    path = tmp_path_factory.mktemp("bag") / "bag.json"
    path.write_text(buf.getvalue())
    return path


def test_render_draws_what_detect_found_at_the_models_threshold(bag_answer, tmp_path, capsys):
    """`render --weights` draws what `detect` answers (the model's own threshold, not a fixed one), and
    `render --detections` draws that answer's JSON: the same picture."""
    answer = json.loads(bag_answer.read_text())
    n = len(answer["detections"])
    assert n >= 3 and answer["score_threshold"] == pytest.approx(0.1718)
    scan = ["render", "--high", str(BAG_HIGH), "--low", str(BAG_LOW)]
    assert main([*scan, "--out", str(tmp_path / "json.png"), "--detections", str(bag_answer)]) == 0
    assert f"(256x256, {n} boxes)" in capsys.readouterr().out
    weights = str(bundled_weights_path())
    assert main([*scan, "--out", str(tmp_path / "model.png"), "--weights", weights, "--device", "cpu"]) == 0
    assert f"(256x256, {n} boxes)" in capsys.readouterr().out
    from_json, from_model = cv2.imread(str(tmp_path / "json.png")), cv2.imread(str(tmp_path / "model.png"))
    assert (from_json == from_model).all()
    above = sum(d["score"] >= 0.3 for d in answer["detections"])
    assert 1 <= above < n
    thresholded = ["--out", str(tmp_path / "t.png"), "--detections", str(bag_answer), "--score-thresh", "0.3"]
    assert main([*scan, *thresholded]) == 0
    assert f"{above} boxes" in capsys.readouterr().out


def test_render_refuses_a_detect_answer_that_does_not_fit(bag_answer, dataset, tmp_path, capsys):
    _, im = _first_annotated(dataset)
    other = ["--high", str(dataset / im["raw_high"]), "--low", str(dataset / im["raw_low"])]
    bag = ["--high", str(BAG_HIGH), "--low", str(BAG_LOW)]
    out = ["--out", str(tmp_path / "o.png")]
    answer = json.loads(bag_answer.read_text())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**answer, "detections": [{"class_name": "knife", "score": 0.9}]}))
    cases = [
        ([*other, *out, "--detections", str(bag_answer)], "answers a 256x256 scan but this scan is 192x160"),
        ([*bag, *out, "--detections", str(bag_answer), "--image-id", "1"], "--image-id does not apply"),
        ([*bag, *out, "--detections", str(broken)], "detection 0 lacks class_name, score or box"),
    ]
    for args, message in cases:
        assert main(["render", *args]) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_render_cli_bad_inputs(dataset, tmp_path, capsys):
    coco = json.loads((dataset / "annotations" / "test.json").read_text())
    im = coco["images"][0]
    high, low = str(dataset / im["raw_high"]), str(dataset / im["raw_low"])
    ann = str(dataset / "annotations" / "test.json")
    small = tmp_path / "small.png"
    write_raw_png(small, np.zeros((10, 10), np.uint16))
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), np.zeros((10, 10), np.uint8))
    renamed = tmp_path / "scan_high.png"
    renamed.write_bytes(Path(high).read_bytes())
    not_json = tmp_path / "object.json"
    not_json.write_text('{"boxes": []}')
    o = str(tmp_path / "o.png")
    cases = [
        (
            ["--high", str(renamed), "--low", low, "--out", o, "--annotations", ann],
            "--annotations needs --image-id: ",
        ),
        (
            ["--high", high, "--low", low, "--out", o, "--annotations", ann, "--image-id", "999"],
            "no image with id or file stem '999'",
        ),
        (["--high", high, "--low", low, "--out", o, "--image-id", "1"], "--image-id picks an image of"),
        (["--high", high, "--low", low, "--out", o, "--detections", str(not_json)], "expected the JSON of"),
        (["--high", high, "--low", str(small), "--out", o], "high/low size mismatch"),
        (["--high", str(eight), "--low", low, "--out", o], "PNG is 8-bit"),
        (["--high", high, "--low", low, "--out", str(tmp_path / "o.gif")], "--out must end in .png or .jpg"),
        (
            ["--high", high, "--low", low, "--out", o, "--detections", "nope.json"],
            "detections file not found",
        ),
    ]
    for extra, message in cases:
        assert main(["render", *extra]) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as stop:  # argparse's own check
        main(["render", "--high", high, "--low", low, "--out", o, "--score-threshold", "1.5"])
    assert (
        stop.value.code == 2
        and "--score-threshold/--score-thresh: must be in [0, 1]" in capsys.readouterr().err
    )


def test_render_cli_with_weights(dataset, tmp_path, capsys):
    from xscreen.model import build_detector
    from xscreen.model.config import load_config
    from xscreen.model.weights import save_weights

    cfg = load_config("small_atss").with_overrides(
        min_size=160, max_size=192, candidate_score_thresh=0.0, max_dets=5
    )
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
