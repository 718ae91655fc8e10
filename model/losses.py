"""ATSS training losses (method.md §2): focal, centerness-weighted GIoU, centerness BCE; DFL for LAreg."""

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
