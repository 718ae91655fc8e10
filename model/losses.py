"""ATSS training losses (docs/method.md §2): focal, centerness-weighted GIoU, centerness BCE; DFL for LAreg;
the released heads' losses with loss_d (docs/method.md §7.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from xscreen.model.box_coder import DeltaXYWHBoxCoder, DistanceBinCoder
from xscreen.model.config import DetectorConfig
from xscreen.model.head import HeadOutputs


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """[K] centerness of each anchor centre in its GT: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    ratio = (lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1))
    return ratio.clamp(min=0).sqrt()


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """GFL's DFL: [K, B] bin logits, [K] continuous target in [0, B-1) -> [K] loss."""
    left = target.long()
    w_left = (left + 1).to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * w_left
        + F.cross_entropy(logits, left + 1, reduction="none") * w_right
    )


def atss_losses(
    outputs: HeadOutputs,
    anchors: Tensor,
    strides: Tensor,
    matched: Tensor,
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    cfg: DetectorConfig,
) -> dict[str, Tensor]:
    """Scalar losses for a batch.

    outputs: cls_logits [N, A, C], bbox_reg [N, A, cfg.reg_channels], centerness [N, A, 1];
    anchors [A, 4], strides [A], matched [N, A] (GT index per anchor, -1 background), per-image GT
    boxes/labels. cfg gives the loss weights (focal_alpha/gamma, giou_weight, dfl_weight), LAreg or
    not and reg_max. Normalisation as in the authors' mmdet ATSSHead: focal and centerness losses
    / max(1, num_pos); GIoU weighted by the centerness targets and divided by max(1, sum of those).
    """
    if cfg.released:
        return released_losses(outputs, anchors, strides, matched, gt_boxes, gt_labels, cfg)
    cls_logits, reg, centerness = outputs
    num_images, num_anchors, num_classes = cls_logits.shape
    cls_targets = torch.zeros_like(cls_logits)
    pos_anchor, pos_gt, pos_img, pos_strides = [], [], [], []
    for i in range(num_images):
        pos = torch.nonzero(matched[i] >= 0).squeeze(1)
        if pos.numel() == 0:  # an image without objects (or without positives): only negatives
            continue
        gi = matched[i, pos]
        cls_targets[i, pos, gt_labels[i][gi]] = 1.0
        pos_anchor.append(anchors[pos])
        pos_gt.append(gt_boxes[i][gi])
        pos_img.append(pos + i * num_anchors)
        pos_strides.append(strides[pos])
    num_pos = sum(p.numel() for p in pos_img)
    norm = max(1.0, float(num_pos))
    loss_cls = (
        sigmoid_focal_loss(
            cls_logits, cls_targets, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="sum"
        )
        / norm
    )
    if num_pos == 0:
        zero = reg.sum() * 0.0 + centerness.sum() * 0.0
        losses = {"loss_cls": loss_cls, "loss_bbox": zero, "loss_centerness": zero}
        if cfg.la_reg:
            losses["loss_dfl"] = zero
        return losses

    flat = torch.cat(pos_img)
    a, g, s = torch.cat(pos_anchor), torch.cat(pos_gt), torch.cat(pos_strides)
    r = reg.reshape(-1, reg.shape[-1])[flat]
    ctr_logit = centerness.reshape(-1)[flat]
    ctr_t = centerness_targets(a, g)
    if cfg.la_reg:
        coder = DistanceBinCoder(cfg.reg_max)
        pred_boxes = coder.decode(a, r, s)
    else:
        pred_boxes = DeltaXYWHBoxCoder().decode(a, r)
    ctr_sum = max(1.0, float(ctr_t.sum()))
    giou = generalized_box_iou_loss(pred_boxes, g, reduction="none")
    losses = {
        "loss_cls": loss_cls,
        "loss_bbox": cfg.giou_weight * (giou * ctr_t).sum() / ctr_sum,
        "loss_centerness": F.binary_cross_entropy_with_logits(ctr_logit, ctr_t, reduction="sum") / norm,
    }
    if cfg.la_reg:
        # GFL: DFL over the 4 sides, weighted by the quality target, averaged over 4 sides x weight sum
        target = coder.target_distances(a, g, s)  # [K, 4]
        dfl = distribution_focal_loss(r.reshape(-1, cfg.reg_max + 1), target.reshape(-1)).reshape(-1, 4)
        losses["loss_dfl"] = cfg.dfl_weight * (dfl * ctr_t[:, None]).sum() / (4.0 * ctr_sum)
    return losses


# mmdetection's bbox2distance clamps target distances to reg_max - 0.1 (docs/method.md §7.3)
RELEASED_DISTANCE_EPS = 0.1
# mmdetection divides by the sum of quality targets unless it is below this (then by 1)
RELEASED_AVG_EPS = 1e-12


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """[K] IoU of box a[k] with box b[k] (x1y1x2y2; mmdetection's bbox_overlaps(is_aligned=True))."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=eps)


def released_losses(
    outputs: HeadOutputs,
    anchors: Tensor,
    strides: Tensor,
    matched: Tensor,
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    cfg: DetectorConfig,
) -> dict[str, Tensor]:
    """The released ATSSLAclsHead / ATSSLAregHead losses (docs/method.md §7.3); arguments as ``atss_losses``.

    - loss_cls: sigmoid focal loss / num_total, num_total = sum over images of max(1, positives);
    - loss_bbox: GIoU x giou_weight between the box decoded from the bin expectation and the GT, both in
      units of the level's stride from the anchor centre, weighted by the quality target q, / sum(q);
    - loss_centerness: BCE of the reg_conf logit against q, / num_total;
    - loss_d: sigmoid focal loss over the reg_max + 1 bins of each side, the floor bin of the target
      distance (clamped to reg_max - 0.1) as the class, element weight q, / 4, / sum(q).
    q is the ATSS centerness of the anchor centre (``quality_target`` centerness, final version) or the
    IoU of the detached predicted box with its GT (``iou``, earliest version).
    """
    cls_logits, reg, quality = outputs
    num_images, num_anchors, _ = cls_logits.shape
    num_bins = cfg.reg_max + 1
    cls_targets = torch.zeros_like(cls_logits)
    flat_idx, pos_gt, num_total = [], [], 0
    for i in range(num_images):
        pos = torch.nonzero(matched[i] >= 0).squeeze(1)
        num_total += max(1, pos.numel())  # mmdetection get_targets: every image counts one positive
        if pos.numel() == 0:
            continue
        gi = matched[i, pos]
        cls_targets[i, pos, gt_labels[i][gi]] = 1.0
        flat_idx.append(pos + i * num_anchors)
        pos_gt.append(gt_boxes[i][gi])
    loss_cls = (
        sigmoid_focal_loss(
            cls_logits, cls_targets, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="sum"
        )
        / num_total
    )
    if not flat_idx:
        zero = reg.sum() * 0.0 + quality.sum() * 0.0
        return {"loss_cls": loss_cls, "loss_bbox": zero, "loss_centerness": zero, "loss_d": zero}

    flat = torch.cat(flat_idx)
    g = torch.cat(pos_gt)
    a = anchors.repeat(num_images, 1)[flat]
    s = strides.repeat(num_images)[flat]
    r = reg.reshape(-1, reg.shape[-1])[flat]  # [K, 4 * B]
    q_logit = quality.reshape(-1)[flat]
    coder = DistanceBinCoder(cfg.reg_max)
    centre = torch.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], dim=1) / s[:, None]
    d = coder.distances(r)  # [K, 4] in strides
    pred = torch.cat([centre - d[:, :2], centre + d[:, 2:]], dim=1)
    target = g / s[:, None]
    q = aligned_iou(pred.detach(), target) if cfg.quality_target == "iou" else centerness_targets(a, g)
    q_sum = float(q.sum())
    q_sum = 1.0 if q_sum < RELEASED_AVG_EPS else q_sum
    giou = generalized_box_iou_loss(pred, target, reduction="none")
    dist = torch.cat([centre - target[:, :2], target[:, 2:] - centre], dim=1)
    bins = dist.clamp(min=0.0, max=cfg.reg_max - RELEASED_DISTANCE_EPS).floor().long().reshape(-1)
    bin_targets = F.one_hot(bins, num_bins).to(r.dtype)
    loss_d = sigmoid_focal_loss(
        r.reshape(-1, num_bins), bin_targets, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none"
    )
    return {
        "loss_cls": loss_cls,
        "loss_bbox": cfg.giou_weight * (giou * q).sum() / q_sum,
        "loss_centerness": F.binary_cross_entropy_with_logits(q_logit, q, reduction="sum") / num_total,
        "loss_d": (loss_d * q.repeat_interleave(4)[:, None]).sum() / 4.0 / q_sum,
    }
