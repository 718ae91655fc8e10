"""ATSS assigner, anchors and box coder on hand-built cases (docs/method.md §2)."""

import statistics

import pytest
import torch

from xscreen.model.anchors import STRIDES, anchors_for_level, feature_sizes, generate_anchors
from xscreen.model.assigner import atss_assign
from xscreen.model.box_coder import DeltaXYWHBoxCoder, DistanceBinCoder


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _shifted(dx):
    return [0.0 + dx, 0.0, 10.0 + dx, 10.0]


def test_anchor_convention_offset_zero_row_major():
    a = anchors_for_level(2, 3, 8)
    # cell (x, y) centred at (x*8, y*8), side 8*8 = 64, row-major: (0,0), (1,0), (2,0), (0,1), ...
    assert a.shape == (6, 4)
    assert a[0].tolist() == [-32.0, -32.0, 32.0, 32.0]
    assert a[1].tolist() == [-24.0, -32.0, 40.0, 32.0]
    assert a[3].tolist() == [-32.0, -24.0, 32.0, 40.0]
    assert feature_sizes(96, 160) == [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]
    anchors, per_level = generate_anchors(feature_sizes(96, 160))
    assert per_level == [240, 60, 15, 6, 2] and anchors.shape == (323, 4)
    assert anchors[240].tolist() == [-64.0, -64.0, 64.0, 64.0]  # first P4 anchor, side 8*16
    assert STRIDES == (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="multiple of 32"):
        feature_sizes(100, 96)


def test_no_gt_gives_all_background():
    anchors, per_level = generate_anchors(feature_sizes(64, 64))
    out = atss_assign(anchors, per_level, torch.zeros((0, 4)))
    assert out.shape == (anchors.shape[0],) and bool((out == -1).all())


def test_centre_on_edge_and_margin_rule_with_topk_larger_than_level():
    gt = [0.0, 0.0, 10.0, 10.0]
    near = [
        _shifted(5.0),  # centre (10, 5): exactly on the right edge -> not inside
        _shifted(-5.0),  # centre (0, 5): on the left edge -> not inside
        _shifted(4.995),  # centre inside by 0.005 px: not "more than 0.01"
        _shifted(4.98),  # centre inside by 0.02 px -> positive
    ]
    far = [[100.0 * k, 100.0 * k, 100.0 * k + 10, 100.0 * k + 10] for k in range(1, 9)]  # IoU 0
    boxes = near + far
    # topk=20 > 12 anchors of the only level: every anchor is a candidate
    ious = [_iou(b, gt) for b in boxes]
    thresh = statistics.mean(ious) + statistics.stdev(ious)  # unbiased std, as torch.std
    assert thresh < min(ious[:4])  # so the IoU test passes for the 4 near anchors: the centre rule decides
    out = atss_assign(torch.tensor(boxes), [12], torch.tensor([gt]), topk=20)
    assert out.tolist() == [-1, -1, -1, 0] + [-1] * 8


def test_topk_per_level_and_threshold():
    gt = [0.0, 0.0, 10.0, 10.0]
    # level 0: three anchors centred on the GT centre (distance 0) and a 1-px shifted copy of the GT
    # (distance 1, IoU 0.818); level 1: one anchor around the GT and three far away (IoU 0)
    lvl0 = [_shifted(0.0), [-20.0, -20.0, 30.0, 30.0], [-45.0, -45.0, 55.0, 55.0], _shifted(1.0)]
    lvl1 = [[-10.0, -10.0, 20.0, 20.0]] + [[100.0 * k, 0.0, 100.0 * k + 10, 10.0] for k in (1, 2, 3)]
    boxes = lvl0 + lvl1
    cand = [0, 1, 2, 4, 5, 6]  # topk=3: the 3 closest of each level
    ious = [_iou(boxes[i], gt) for i in cand]  # 1, 0.04, 0.01, 0.111, 0, 0
    thresh = statistics.mean(ious) + statistics.stdev(ious)  # 0.194 + 0.397 = 0.591
    assert _iou(boxes[3], gt) > thresh  # anchor 3 would pass the IoU test but is not a candidate
    out = atss_assign(torch.tensor(boxes), [4, 4], torch.tensor([gt]), topk=3)
    assert out.tolist() == [0] + [-1] * 7
    # topk = 5 is more than either level holds: all 8 anchors are candidates, threshold 0.660
    ious = [_iou(b, gt) for b in boxes]
    thresh = statistics.mean(ious) + statistics.stdev(ious)
    expected = [0 if v >= thresh else -1 for v in ious]
    assert expected == [0, -1, -1, 0] + [-1] * 4
    assert atss_assign(torch.tensor(boxes), [4, 4], torch.tensor([gt]), topk=5).tolist() == expected


def test_ties_between_gts_go_to_lower_index_and_highest_iou_wins():
    anchors = torch.tensor([_shifted(0.0), _shifted(1.0), _shifted(9.0)] + [[100.0, 100, 110, 110]] * 3)
    per_level = [6]
    # two identical GTs: every positive is an exact tie -> GT 0
    same = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    out = atss_assign(anchors, per_level, same, topk=6)
    assert out[0].item() == 0 and out[1].item() == 0 and set(out.tolist()) <= {0, -1}
    # GT 1 shifted by 1: anchor 1 matches GT 1 exactly (IoU 1) and GT 0 with IoU 0.818 -> GT 1
    two = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10]])
    out = atss_assign(anchors, per_level, two, topk=6)
    assert out[0].item() == 0 and out[1].item() == 1
    # reversed GT order: the same anchors follow their boxes
    out = atss_assign(anchors, per_level, two.flip(0), topk=6)
    assert out[0].item() == 1 and out[1].item() == 0


def test_tiny_boxes():
    anchors, per_level = generate_anchors(feature_sizes(256, 256))
    # 2x2 box between anchor centres (multiples of 8 on P3): no candidate centre inside -> no positive
    out = atss_assign(anchors, per_level, torch.tensor([[50.0, 50.0, 52.0, 52.0]]))
    assert bool((out == -1).all())
    # 2x2 box around the centre (48, 48) of P3 cell (6, 6). Every candidate anchor contains it, so its
    # IoU is 4 / side^2; P7 (2x2 cells) has only 4 anchors, fewer than topk = 9.
    ious = [4 / 64**2] * 9 + [4 / 128**2] * 9 + [4 / 256**2] * 9 + [4 / 512**2] * 9 + [4 / 1024**2] * 4
    thresh = statistics.mean(ious) + statistics.stdev(ious)
    assert 4 / 128**2 < thresh < 4 / 64**2  # only the P3 candidates pass the IoU test
    out = atss_assign(anchors, per_level, torch.tensor([[47.0, 47.0, 49.0, 49.0]]))
    # ... and of those, only (48, 48) lies inside the box
    assert torch.nonzero(out >= 0).flatten().tolist() == [6 * 32 + 6]


def test_delta_coder_roundtrip_and_stds():
    coder = DeltaXYWHBoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    boxes = torch.tensor([[6.4, 0.0, 70.4, 128.0]])  # centre +6.4 px = 0.1 width, +32 px; height x2
    d = coder.encode(anchors, boxes)
    # (0.1 / 0.1, 0.5 / 0.1, log(1) / 0.2, log(2) / 0.2)
    assert torch.allclose(d, torch.tensor([[1.0, 5.0, 0.0, torch.log(torch.tensor(2.0)) / 0.2]]), atol=1e-5)
    assert torch.allclose(coder.decode(anchors, d), boxes, atol=1e-4)


def test_distance_bin_coder():
    coder = DistanceBinCoder(16)
    anchors = torch.tensor([[-32.0, -32.0, 32.0, 32.0]])  # centre (0, 0), stride 8
    logits = torch.full((1, 4 * 17), -1e4)
    for side, b in enumerate([1, 2, 3, 16]):
        logits[0, side * 17 + b] = 0.0
    box = coder.decode(anchors, logits, torch.tensor([8.0]))
    assert box.tolist() == [[-8.0, -16.0, 24.0, 128.0]]
    t = coder.target_distances(anchors, torch.tensor([[-8.0, -16.0, 24.0, 500.0]]), torch.tensor([8.0]))
    assert torch.allclose(t, torch.tensor([[1.0, 2.0, 3.0, 15.99]]))
