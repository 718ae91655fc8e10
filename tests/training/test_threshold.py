"""Operating threshold: the selection rules on hand-made detections, the weights header, the service,
``xscreen detect``/``threshold`` and the ONNX export carrying it, and the fallback for older files."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from tests.support.detectors import sharpen_head
from xscreen.cli import main as xscreen_main
from xscreen.model import WeightsError, build_detector, load_config, load_weights, save_weights
from xscreen.model.config import LEGACY_SCORE_THRESHOLD
from xscreen.model.onnx_export import onnx_metadata, parse_onnx_metadata
from xscreen.model.weights import read_header, set_operating_point
from xscreen.training.threshold import (
    ThresholdError,
    pick_threshold,
    plot_operating_point,
    pr_points,
    select_threshold,
)

pytestmark = pytest.mark.timeout(300)

# ------------------------------------------------------------------------------------ the rules

# Pooled detections by score: T T F T F F, 4 objects. Keeping score >= s gives
#   s    0.9  0.8  0.7  0.6  0.5  0.4
#   P    1    1    2/3  3/4  3/5  1/2
#   R    1/4  1/2  1/2  3/4  3/4  3/4
#   F1   .4   .667 .571 .75  .667 .6
SCORES = np.array([0.5, 0.9, 0.7, 0.8, 0.4, 0.6])  # deliberately unsorted
TP = np.array([False, True, False, True, False, True])


def test_best_f1_rule_picks_the_highest_f1():
    op = select_threshold(pr_points(SCORES, TP, 4), "best-f1")
    assert op["score_threshold"] == 0.6 and op["rule"] == "best-f1"
    assert (op["precision"], op["recall"], op["f1"]) == (0.75, 0.75, 0.75)
    assert op["num_gt"] == 4 and op["num_detections"] == 6 and "note" not in op


@pytest.mark.parametrize(
    ("target", "threshold", "precision"), [(0.9, 0.8, 1.0), (0.7, 0.6, 0.75), (0.5, 0.4, 0.5)]
)
def test_precision_rule_picks_the_lowest_threshold_reaching_the_target(target, threshold, precision):
    op = select_threshold(pr_points(SCORES, TP, 4), "precision", target)
    assert op["score_threshold"] == threshold and op["precision"] == precision
    assert op["rule"] == f"precision>={target:g}"


def test_best_f2_rule_weighs_recall_and_sits_at_a_lower_threshold_than_best_f1():
    # T T F F F T, 4 objects: at 0.8 P 1 R 1/2 (F1 .667, F2 .556); at 0.5 P 1/2 R 3/4 (F1 .6, F2 .682)
    pts = pr_points([0.9, 0.8, 0.7, 0.6, 0.55, 0.5], [True, True, False, False, False, True], 4)
    f1, f2 = select_threshold(pts, "best-f1"), select_threshold(pts, "best-f2")
    assert (f1["score_threshold"], f1["f1"], "f2" not in f1) == (0.8, 0.6667, True)
    assert (f2["score_threshold"], f2["rule"], f2["precision"], f2["recall"]) == (0.5, "best-f2", 0.5, 0.75)
    assert (f2["f1"], f2["f2"]) == (0.6, 0.6818)


def test_unreachable_precision_falls_back_to_best_f1_and_says_so():
    op = select_threshold(pr_points([0.9, 0.8, 0.7], [False, True, True], 2), "precision", 0.9)
    # 0.9: P 0; 0.8: P 1/2 R 1/2; 0.7: P 2/3 R 1 (F1 0.8)
    assert op["score_threshold"] == 0.7 and op["f1"] == 0.8
    assert "never reached" in op["note"] and op["rule"] == "precision>=0.9"


def test_tied_scores_form_one_candidate_and_f1_ties_take_the_lower_threshold():
    # two detections at 0.5 (one right, one wrong) are kept or dropped together
    pts = pr_points([0.5, 0.5, 0.4], [True, False, True], 2)
    assert pts.thresholds.tolist() == [0.5, 0.4]
    assert pts.precision.tolist() == pytest.approx([0.5, 2 / 3])
    # F1 equal at 0.9 (P 1, R 1/3 -> .5) and 0.3 (P 1/3, R 1 -> .5): the lower threshold (more recall)
    op = select_threshold(pr_points([0.9, 0.6, 0.5, 0.3], [True, False, False, True], 3), "best-f1")
    assert op["score_threshold"] == 0.3


def test_threshold_is_rounded_down_without_changing_the_kept_detections():
    assert select_threshold(pr_points([0.61234, 0.5], [True, False], 1))["score_threshold"] == 0.612
    # 0.612 would also keep the detection at 0.6124: one more decimal
    assert select_threshold(pr_points([0.6125, 0.6124], [True, False], 1))["score_threshold"] == 0.6125


def test_no_correct_detection_keeps_the_old_default():
    for pts in (pr_points([0.9, 0.2], [False, False], 3), pr_points([], [], 3)):
        op = select_threshold(pts)
        assert op["score_threshold"] == LEGACY_SCORE_THRESHOLD == 0.3 and op["precision"] is None
        assert "no correct detection" in op["note"]


def test_bad_rule_or_precision_is_refused():
    pts = pr_points(SCORES, TP, 4)
    with pytest.raises(ThresholdError, match="unknown threshold rule"):
        select_threshold(pts, "recall")
    with pytest.raises(ThresholdError, match="minimum precision"):
        select_threshold(pts, "precision", 1.5)


def _coco_case():
    """Two images, two classes, 3 objects; matching by pycocotools at IoU 0.5 gives by score
    0.95 T, 0.9 F (duplicate), 0.85 T, 0.8 F (wrong class), 0.75 F (IoU 0.45), 0.7 T, 0.6 F (no object)."""
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    images = [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20]},
    ]
    gt = {"images": images, "annotations": anns, "categories": cats}

    def det(img, cat, box, score):
        return {"image_id": img, "category_id": cat, "bbox": box, "score": score}

    results = [
        det(1, 1, [0, 0, 10, 10], 0.95),
        det(1, 1, [0, 0, 10, 10], 0.9),
        det(1, 2, [20, 20, 10, 10], 0.85),
        det(2, 2, [0, 0, 20, 20], 0.8),
        det(1, 2, [20, 20, 4.5, 10], 0.75),  # IoU 45/100 with the class-b object: below 0.5
        det(2, 1, [0, 0, 20, 20], 0.7),
        det(2, 1, [60, 60, 5, 5], 0.6),
    ]
    return gt, results


def test_pycocotools_matching_pools_classes_at_iou_half(tmp_path):
    gt, results = _coco_case()
    # by score: P 1, 1/2, 2/3, 1/2, 2/5, 1/2, 3/7; R 1/3, 1/3, 2/3, 2/3, 2/3, 1, 1
    op = pick_threshold(gt, results, "best-f1", plot=tmp_path / "pr.png")
    assert op["score_threshold"] == 0.7 and (op["precision"], op["recall"]) == (0.5, 1.0)
    assert op["f1"] == pytest.approx(2 / 3, abs=1e-4) and op["num_gt"] == 3 and op["num_images"] == 2
    assert pick_threshold(gt, results, "precision", 0.9)["score_threshold"] == 0.95
    assert pick_threshold(gt, results, "precision", 0.6)["score_threshold"] == 0.85
    # only image 2: 0.8 F (wrong class), 0.7 T, 0.6 F; one object
    op2 = pick_threshold(gt, results, img_ids=[2])
    assert op2["score_threshold"] == 0.7 and op2["precision"] == 0.5 and op2["num_gt"] == 1
    png = (tmp_path / "pr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape == (360, 900, 3)


def test_plot_without_any_correct_detection_still_writes(tmp_path):
    pts = pr_points([0.9], [False], 1)
    path = plot_operating_point(pts, select_threshold(pts), tmp_path / "x" / "pr.png")
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------- the weights file


def _detector(seed: int = 0):
    """A tiny small_lacls (ResNet-18, 64-channel FPN) with a sharpened random head: many detections."""
    cfg = load_config("small_lacls").with_overrides(
        name="threshold_test",
        fpn_channels=64,
        stacked_convs=1,
        min_size=128,
        max_size=128,
        candidate_score_thresh=0.02,
    )
    torch.manual_seed(seed)
    det = build_detector(cfg).eval()
    sharpen_head(det, std=0.05)
    return det


OP = {"score_threshold": 0.42, "rule": "best-f1", "split": "val", "precision": 0.8, "recall": 0.7, "f1": 0.75}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("thr")
    det = _detector()
    new, old = tmp / "new.safetensors", tmp / "old.safetensors"
    sha = save_weights(det, new, metadata={"name": "thr-test", "version": "1"}, operating_point=OP)
    save_weights(det, old, metadata={"name": "thr-test", "version": "0"})
    return det, new, old, sha, tmp


def test_operating_point_round_trips(files):
    _, new, _, sha, _ = files
    _, info = load_weights(new)
    assert info.operating_point == OP and info.score_threshold == 0.42 and info.sha256 == sha
    assert json.loads(read_header(new)["operating_point"])["rule"] == "best-f1"


def test_old_file_loads_with_the_old_default_and_one_log_line(files, caplog):
    _, _, old, _, _ = files
    with caplog.at_level(logging.INFO, logger="xscreen.model.weights"):
        _, info = load_weights(old)
    assert info.operating_point is None and info.score_threshold == LEGACY_SCORE_THRESHOLD == 0.3
    lines = [r.getMessage() for r in caplog.records if "operating threshold" in r.getMessage()]
    assert len(lines) == 1 and str(old) in lines[0] and "old default score threshold 0.3" in lines[0]


def test_set_operating_point_keeps_tensors_and_refuses_bad_values(files):
    det, _, old, sha, tmp = files
    half = tmp / "half.safetensors"
    save_weights(det, half, half=True)
    half_sha = read_header(half)["sha256"]
    set_operating_point(half, half, {"score_threshold": 0.25, "rule": "manual"})
    model, info = load_weights(half)
    assert info.score_threshold == 0.25 and info.sha256 == half_sha != sha
    with pytest.raises(WeightsError, match=r"number in \[0, 1\]"):
        set_operating_point(old, tmp / "bad.safetensors", {"score_threshold": 1.5, "rule": "manual"})
    with pytest.raises(WeightsError, match="no rule"):
        save_weights(det, tmp / "bad.safetensors", operating_point={"score_threshold": 0.5})
    assert not (tmp / "bad.safetensors").exists()


def test_threshold_command_shows_sets_and_refuses(files, capsys):
    _, new, old, sha, tmp = files
    assert xscreen_main(["threshold", str(old)]) == 0
    assert "no operating point recorded (default 0.3)" in capsys.readouterr().out
    out = tmp / "set.safetensors"
    assert xscreen_main(["threshold", str(old), "--set", "0.37", "--out", str(out)]) == 0
    assert "score_threshold 0.37 (rule manual" in capsys.readouterr().out
    _, info = load_weights(out)
    assert info.operating_point == {"score_threshold": 0.37, "rule": "manual"} and info.sha256 == sha
    assert xscreen_main(["threshold", str(old), "--set", "0.37"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert xscreen_main(["threshold", str(tmp / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        xscreen_main(["threshold", str(old), "--set", "1.5", "--out", str(out)])
    assert exc.value.code == 2 and "must be in [0, 1]" in capsys.readouterr().err


def test_threshold_command_picks_on_a_split(files, tmp_path, capsys):
    """--data runs the model over a split and records what the rule picks there (as training does)."""
    det, _, old, _, _ = files
    from xscreen.scans import write_converted

    images, anns = [], []
    for k in range(2):
        image = (np.random.default_rng(k).random((128, 128, 3)) * 255).astype(np.float32)
        (tmp_path / "images" / "val").mkdir(parents=True, exist_ok=True)
        write_converted(tmp_path / "images" / "val" / f"{k}.png", image)
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": 128, "height": 128})
    # ground truth exactly where the model's top detection of each image is: a correct detection exists
    from xscreen.scans import read_converted

    for im in images:
        pic = torch.from_numpy(read_converted(tmp_path / "images" / "val" / im["file_name"])).permute(2, 0, 1)
        with torch.inference_mode():
            d = det.predict([pic.contiguous()])[0]
        x1, y1, x2, y2 = d["boxes"][0].tolist()
        anns.append(
            {"image_id": im["id"], "category_id": int(d["labels"][0]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(det.cfg.class_names)]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    out, png = tmp_path / "picked.safetensors", tmp_path / "pr.png"
    argv = ["threshold", str(old), "--data", str(tmp_path), "--out", str(out), "--plot", str(png)]
    assert xscreen_main(argv) == 0
    _, info = load_weights(out)
    op = info.operating_point
    assert op["split"] == "val" and op["rule"] == "best-f1" and op["num_gt"] == 2 and op["recall"] > 0
    assert png.stat().st_size > 1000 and "wrote" in capsys.readouterr().out


def test_onnx_metadata_carries_the_threshold_and_old_exports_have_none():
    cfg = _detector().cfg
    kw = dict(name="n", version="1", sha256="0" * 64, opset=17)
    meta = parse_onnx_metadata(onnx_metadata(cfg, **kw, operating_point=OP))
    assert meta.score_threshold == 0.42 and json.loads(meta.raw["operating_point"]) == OP
    assert parse_onnx_metadata(onnx_metadata(cfg, **kw)).score_threshold is None
    bad = {**onnx_metadata(cfg, **kw), "score_threshold": "1.5"}
    with pytest.raises(Exception, match="score_threshold"):
        parse_onnx_metadata(bad)


# ------------------------------------------------------- the service, detect and the ONNX export


def _scan():
    from xscreen.training.synth.scene import make_scan

    s = make_scan(np.random.default_rng(3), 160, 160)
    return s.high, s.low


@pytest.fixture(scope="module")
def served(files):
    """Weights whose own threshold lies inside their score range on the test scan (some kept, some not)."""
    from xscreen.inference.backend import TorchBackend
    from xscreen.scans import convert_scan

    _, _, old, _, tmp = files
    high, low = _scan()
    (out,), _ = TorchBackend(old, "cpu").predict([convert_scan(high, low)])
    scores = np.sort(out["scores"])[::-1]
    assert len(scores) >= 6
    t = round(float(scores[len(scores) // 2]) - 1e-4, 4)  # keeps about half
    path = tmp / "served.safetensors"
    set_operating_point(old, path, {"score_threshold": t, "rule": "manual"})
    return path, t, scores


def test_service_uses_the_weights_threshold_unless_the_client_or_the_setting_gives_one(served, monkeypatch):
    from tests.support.service_fixtures import InThreadServer, post_scan

    path, t, scores = served
    high, low = (cv2.imencode(".png", im)[1].tobytes() for im in _scan())
    monkeypatch.delenv("XSCREEN_SCORE_THRESHOLD", raising=False)
    with InThreadServer(weights=path, device="cpu", warmup=False) as server:
        own = post_scan(server.url, high, low, key=None).json()
        asked = post_scan(server.url, high, low, key=None, score_threshold=0.05).json()
    assert own["score_threshold"] == t and len(own["detections"]) == int((scores >= t).sum())
    assert 0 < len(own["detections"]) < len(scores)
    assert asked["score_threshold"] == 0.05 and len(asked["detections"]) == int((scores >= 0.05).sum())
    monkeypatch.setenv("XSCREEN_SCORE_THRESHOLD", "0.9")  # the operator's override beats the model's own
    with InThreadServer(weights=path, device="cpu", warmup=False) as server:
        over = post_scan(server.url, high, low, key=None).json()
    assert over["score_threshold"] == 0.9 and len(over["detections"]) == int((scores >= 0.9).sum())


def test_detect_and_onnx_export_carry_the_threshold(served, tmp_path, capsys, monkeypatch):
    path, t, scores = served
    monkeypatch.delenv("XSCREEN_SCORE_THRESHOLD", raising=False)
    high, low = _scan()
    for name, im in (("h.png", high), ("l.png", low)):
        cv2.imwrite(str(tmp_path / name), im)
    scan = ["--high", str(tmp_path / "h.png"), "--low", str(tmp_path / "l.png"), "--device", "cpu", "--json"]
    assert xscreen_main(["detect", *scan, "--weights", str(path)]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["score_threshold"] == t and len(response["detections"]) == int((scores >= t).sum())
    onnx_path = tmp_path / "m.onnx"
    assert xscreen_main(["export", "--weights", str(path), "--out", str(onnx_path), "--no-verify"]) == 0
    capsys.readouterr()
    from xscreen.inference.onnx_backend import OnnxBackend

    backend = OnnxBackend(onnx_path, "cpu")
    assert backend.meta.score_threshold == t and backend.info.score_threshold == t
    argv = [
        "detect",
        *scan,
        "--weights",
        str(path),
        "--backend",
        "onnxruntime",
        "--onnx-path",
        str(onnx_path),
    ]
    assert xscreen_main(argv) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["score_threshold"] == t and len(response["detections"]) == int((scores >= t).sum())


def test_describe_tells_a_threshold_set_without_data_from_one_picked_on_data():
    from xscreen.training.threshold import describe

    manual = {"score_threshold": 0.4, "rule": "manual", "precision": None}
    assert "not picked on data" in describe(manual)
    imported = {"score_threshold": 0.3, "rule": "import-default", "precision": None}
    assert "not picked on data" in describe(imported)
    for rule in ("best-f1", "precision>=0.9"):
        assert "no correct detection" in describe({"score_threshold": 0.3, "rule": rule, "precision": None})
