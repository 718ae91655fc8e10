"""ATSS label assignment (Zhang et al., CVPR 2020) as a pure function, per docs/method.md §2."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

# docs/method.md §2 / mmdet ATSSAssigner: an anchor centre must lie inside the GT by more than 0.01 px.
CENTRE_MARGIN = 0.01


def atss_assign(anchors: Tensor, num_anchors_per_level: list[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """Index of the GT each anchor is assigned to, -1 for background.

    anchors: [A, 4] x1y1x2y2, levels concatenated in the order of ``num_anchors_per_level``.
    gt_boxes: [G, 4] x1y1x2y2. Returns int64 [A].

    1. per level, the ``topk`` anchors whose centres are closest (L2) to the GT centre
       (all of the level's anchors when it has fewer);
    2. threshold = mean + std (unbiased, torch default) of those candidates' IoUs with the GT;
    3. positive: candidate IoU >= threshold and the anchor centre inside the GT by > 0.01 px on
       every side;
    4. an anchor positive for several GTs goes to the one with the highest IoU; exact ties go to the
       lower GT index.
    """
    num_anchors = anchors.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0 or num_anchors == 0:
        return assigned
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"num_anchors_per_level sums to {sum(num_anchors_per_level)}, anchors: {num_anchors}"
        )

    ious = box_iou(anchors, gt_boxes)  # [A, G], plain IoU (no +1)
    anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
    gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [G, 2]
    dist = torch.cdist(anchor_ctr, gt_ctr)  # [A, G]

    candidates = []
    start = 0
    for n in num_anchors_per_level:
        k = min(topk, n)
        if k > 0:
            # smallest distances; torch.topk's order among equal distances is irrelevant to the result
            # except for which of several equidistant anchors become candidates (as in mmdet).
            _, idx = dist[start : start + n].topk(k, dim=0, largest=False)  # [k, G]
            candidates.append(idx + start)
        start += n
    cand = torch.cat(candidates, dim=0)  # [K, G]
    gt_index = torch.arange(num_gt, device=anchors.device)
    cand_ious = ious[cand, gt_index]  # [K, G]
    thresh = cand_ious.mean(0) + cand_ious.std(0)  # [G]; std is NaN with a single candidate -> none
    is_pos = cand_ious >= thresh[None, :]

    cx, cy = anchor_ctr[cand, 0], anchor_ctr[cand, 1]  # [K, G]
    inside = (
        torch.stack(
            [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=0
        ).amin(0)
        > CENTRE_MARGIN
    )
    is_pos &= inside

    masked = torch.full_like(ious, -1.0)  # IoU >= 0, so -1 marks "not a positive for this GT"
    pos_anchor = cand[is_pos]
    pos_gt = gt_index.expand_as(cand)[is_pos]
    masked[pos_anchor, pos_gt] = ious[pos_anchor, pos_gt]
    best, best_gt = masked.max(dim=1)  # torch.max returns the first (lowest) index among exact ties
    has = best >= 0
    assigned[has] = best_gt[has]
    return assigned
