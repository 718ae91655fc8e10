"""COCO evaluation against a hand-worked case, the challenging subset, output files and the eval CLI."""

from __future__ import annotations

import json

import pytest

from xscreen.cli import main
from xscreen.model.classes import CLCXRAY_CLASSES
from xscreen.training.evaluate import EvalError, evaluate_detections

KNIFE, CANS = 3, 6  # CLCXray category ids


def _gt():
    cats = [{"id": c.category_id, "name": c.name, "supercategory": c.group} for c in CLCXRAY_CLASSES]
    images = [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 100, "challenging": False},
        {"id": 2, "file_name": "b.png", "width": 100, "height": 100, "challenging": True},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": KNIFE, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": KNIFE, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": CANS, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
    ]
    return {"images": images, "annotations": anns, "categories": cats}


RESULTS = [
    # knife, image 1, by score: TP (exact), FP (far away), TP (exact)
    # -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    {"image_id": 1, "category_id": KNIFE, "bbox": [0, 0, 10, 10], "score": 0.9},
    {"image_id": 1, "category_id": KNIFE, "bbox": [60, 60, 10, 10], "score": 0.8},
    {"image_id": 1, "category_id": KNIFE, "bbox": [20, 20, 10, 10], "score": 0.7},
    # cans, image 2: one detection with IoU 62/100 = 0.62 -> a TP at IoU thresholds .50, .55, .60 only
    {"image_id": 2, "category_id": CANS, "bbox": [0, 0, 10, 6.2], "score": 0.95},
    # cans, image 1 (no cans there): a lower-scored false positive, ranked after the TP
    {"image_id": 1, "category_id": CANS, "bbox": [40, 40, 10, 10], "score": 0.5},
]
# COCO's 101-point interpolation for the knife: the precision envelope is 1 for recall <= 0.5
# (51 recall points 0.00..0.50) and 2/3 above (50 points 0.51..1.00); the boxes are exact, so
# the same at every IoU threshold.
KNIFE_AP = (51 * 1.0 + 50 * (2 / 3)) / 101  # 0.834983...
# Cans: AP50 = 1 (the TP ranks first: precision 1 at recall 1 for all 101 points); at IoU >= .65
# no TP -> 0. AP over the 10 thresholds = 3/10.
CANS_AP, CANS_AP50 = 0.3, 1.0


def test_hand_worked_ap(tmp_path):
    m = evaluate_detections(_gt(), RESULTS)
    knife, cans = m["per_class"]["knife"], m["per_class"]["cans"]
    assert knife["AP"] == pytest.approx(KNIFE_AP, abs=1e-9) and knife["AP50"] == pytest.approx(
        KNIFE_AP, abs=1e-9
    )
    assert (
        cans["AP"] == pytest.approx(CANS_AP, abs=1e-9)
        and cans["AP50"] == pytest.approx(CANS_AP50)
        and cans["AP75"] == 0.0
    )
    assert knife["num_gt"] == 2 and cans["num_gt"] == 1
    assert m["per_class"]["dagger"]["AP"] is None  # no ground truth: undefined, not 0
    assert m["mAP"] == pytest.approx((KNIFE_AP + CANS_AP) / 2, abs=1e-9)
    assert m["AP50"] == pytest.approx((KNIFE_AP + CANS_AP50) / 2, abs=1e-9)
    assert m["AP75"] == pytest.approx(KNIFE_AP / 2, abs=1e-9)
    assert m["mAP50_per_class_mean"] == pytest.approx((KNIFE_AP + 1.0) / 2, abs=1e-9)
    assert m["APs"] == pytest.approx(m["mAP"], abs=1e-9)  # all boxes are 'small' (area < 32^2)
    assert m["APm"] is None and m["APl"] is None
    assert m["num_images"] == 2 and m["num_detections"] == 5
    # Challenging subset = image 2 only: cans alone, and the image-1 false positive no longer counts.
    hard = m["challenging"]
    assert hard["num_images"] == 1 and hard["num_detections"] == 1
    assert hard["mAP"] == pytest.approx(CANS_AP, abs=1e-9) and hard["AP50"] == pytest.approx(1.0)
    assert hard["per_class"]["knife"]["AP"] is None


def test_subset_only_and_files(tmp_path):
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(_gt()))
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(RESULTS))
    m = evaluate_detections(gt_path, res_path, subset="challenging", out_dir=tmp_path / "out")
    assert m["subset"] == "challenging" and m["mAP"] == pytest.approx(0.3) and "challenging" not in m
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(0.3) and set(saved["per_class"]) == {c.name for c in CLCXRAY_CLASSES}
    assert json.loads((out / "detections.json").read_text())[0]["category_id"] == KNIFE
    md = (out / "metrics.md").read_text()
    assert "| 30.0 | 100.0 | 0.0 |" in md and "| cans | 6 | 1 | 30.0 | 100.0 | 0.0 |" in md
    pngs = sorted(p.name for p in (out / "pr_curves").glob("*.png"))
    assert len(pngs) == 12 and "swiss_army_knife.png" in pngs
    assert (out / "pr_curves" / "cans.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_detections_gives_zero_not_a_crash():
    m = evaluate_detections(_gt(), [])
    assert m["mAP"] == 0.0 and m["per_class"]["knife"]["AP"] == 0.0


@pytest.mark.parametrize(
    "results, message",
    [
        (
            [{"image_id": 9, "category_id": KNIFE, "bbox": [0, 0, 1, 1], "score": 1}],
            "image_id 9, which is not in",
        ),
        (
            [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}],
            "category_id 0; the ground truth",
        ),
        ([{"image_id": 1, "category_id": KNIFE, "bbox": [0, 0, 1], "score": 1}], "is not a COCO result"),
        ([{"image_id": 1, "category_id": KNIFE, "bbox": [0, 0, 1, 1], "score": "nan"}], "non-finite"),
        ({"not": "a list"}, "must be a JSON list"),
    ],
)
def test_bad_results_are_rejected(results, message):
    with pytest.raises(EvalError, match=message):
        evaluate_detections(_gt(), results)


def test_empty_challenging_subset_is_an_error():
    gt = _gt()
    for im in gt["images"]:
        im["challenging"] = False
    with pytest.raises(EvalError, match="no image in the ground truth is flagged"):
        evaluate_detections(gt, RESULTS, subset="challenging")


def test_eval_cli_on_a_detections_file(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "test.json").write_text(json.dumps(_gt()))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    code = main(
        [
            "eval",
            "--data",
            str(tmp_path),
            "--detections",
            str(tmp_path / "res.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| 56.7 | 91.7 | 41.7 |" in out and "### challenging subset (1 images" in out
    assert (tmp_path / "o" / "metrics.md").is_file()
    assert main(["eval", "--data", str(tmp_path)]) == 2
    assert "--weights is required" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--detections", str(tmp_path / "missing.json")]) == 2
    assert "detections file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A randomly initialised small detector (score threshold 0 so that it outputs boxes), saved."""
    from xscreen.model import build_detector
    from xscreen.model.config import load_config
    from xscreen.model.weights import save_weights

    root = tmp_path_factory.mktemp("w")
    cfg = load_config("small_atss").with_overrides(
        min_size=160, max_size=192, candidate_score_thresh=0.0, max_dets=20
    )
    save_weights(build_detector(cfg), root / "w.safetensors")
    return root / "w.safetensors"


def test_eval_cli_with_weights_runs_the_model(tmp_path, small_weights, capsys):
    from xscreen.training.synth.writer import SynthConfig, write_dataset

    data = tmp_path / "ds"
    write_dataset(
        SynthConfig(images=2, seed=3, height=160, width=192, splits=(0, 0, 1)), data, progress=False
    )
    out = tmp_path / "o"
    assert (
        main(
            [
                "eval",
                "--weights",
                str(small_weights),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "### all images (2 images" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"mAP", "AP50", "AP75", "APs", "APm", "APl", "per_class", "mAP50_per_class_mean"}
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["num_images"] == 2
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == metrics["num_detections"] == 2 * 20  # max_dets per image at threshold 0
    cat_ids = {c.category_id for c in CLCXRAY_CLASSES}
    for d in dets:
        x, y, w, h = d["bbox"]
        assert d["image_id"] in (1, 2) and d["category_id"] in cat_ids and 0 <= d["score"] <= 1
        assert x >= -1 and x + w <= 193 and y >= -1 and y + h <= 161  # original image's pixels
    assert len(list((out / "pr_curves").glob("*.png"))) == 12
    assert main(["eval", "--weights", str(tmp_path / "none.safetensors"), "--data", str(data)]) == 2
    assert "xscreen eval: error:" in capsys.readouterr().err
