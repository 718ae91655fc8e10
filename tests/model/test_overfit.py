"""Overfit: small LAcls learns two drawn 96x96 images, then finds their boxes (AP50 >= 0.9)."""

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from xscreen.model import build_detector, load_config

SIZE = 96
COLOURS = [(230, 60, 60), (60, 230, 60), (60, 60, 230)]
# (x1, y1, x2, y2, class) per image; class 1 is drawn hollow so that shape matters, not only colour
SCENES = [
    [(7, 9, 37, 45, 0), (52, 15, 88, 37, 1), (22, 60, 67, 87, 2)],
    [(15, 15, 52, 67, 1), (60, 52, 90, 90, 0)],
]


def _draw():
    images, targets = [], []
    for scene in SCENES:
        img = torch.full((3, SIZE, SIZE), 40.0)
        for x1, y1, x2, y2, c in scene:
            img[:, y1:y2, x1:x2] = torch.tensor(COLOURS[c], dtype=torch.float32)[:, None, None]
            if c == 1:
                img[:, y1 + 5 : y2 - 5, x1 + 5 : x2 - 5] = 40.0
        images.append(img)
        targets.append(
            {
                "boxes": torch.tensor([s[:4] for s in scene], dtype=torch.float32),
                "labels": torch.tensor([s[4] for s in scene]),
            }
        )
    return images, targets


def coco_ap50(detections, targets, num_classes):
    """AP at IoU 0.5 (pycocotools) of detections against the targets (0-based labels)."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1} for c in range(num_classes)]}
    dt = []
    for i, (det, tgt) in enumerate(zip(detections, targets, strict=True)):
        gt["images"].append({"id": i + 1, "width": SIZE, "height": SIZE})
        for (x1, y1, x2, y2), c in zip(tgt["boxes"].tolist(), tgt["labels"].tolist(), strict=True):
            box = [x1, y1, x2 - x1, y2 - y1]
            ann = {
                "image_id": i + 1,
                "category_id": c + 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, **ann})
        for (x1, y1, x2, y2), s, c in zip(
            det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True
        ):
            dt.append(
                {"image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            )
    if not dt:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dt), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def test_ap50_helper_scores_perfect_and_wrong_detections():
    _, targets = _draw()
    perfect = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets
    ]
    assert coco_ap50(perfect, targets, 3) == pytest.approx(1.0)
    wrong = [{**d, "labels": (d["labels"] + 1) % 3} for d in perfect]
    assert coco_ap50(wrong, targets, 3) == pytest.approx(0.0)


@pytest.mark.slow
def test_small_lacls_overfits_two_images():
    torch.manual_seed(0)
    images, targets = _draw()
    # The ResNet-18 stays frozen (random features, no ImageNet weights here): FPN, towers, LA loop and
    # predictors learn. Keeps the test to ~50 cheap iterations on a 2-core CPU.
    cfg = load_config("small_lacls").with_overrides(
        min_size=SIZE, max_size=SIZE, class_names=("red", "green ring", "blue"), frozen_stages=4
    )
    model = build_detector(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    first = None
    for _ in range(50):
        losses = model(images, targets)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    assert loss.item() < 0.7 * first
    model.eval()
    with torch.inference_mode():
        detections = model(images)
    assert coco_ap50(detections, targets, cfg.num_classes) >= 0.9
