"""Test-time decoding shared by the torch model and the ONNX backend (docs/method.md §2, mmdet test cfg)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from xscreen.model.anchors import anchor_strides
from xscreen.model.box_coder import DeltaXYWHBoxCoder, DistanceBinCoder
from xscreen.model.config import DetectorConfig
from xscreen.model.head import HeadOutputs


def postprocess_detections(
    outputs: HeadOutputs,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    cfg: DetectorConfig,
) -> list[dict[str, Tensor]]:
    """Raw head outputs -> one {boxes, scores, labels} per image, boxes in ``original_sizes`` pixels.

    outputs: cls_logits [N, A, C], bbox_reg [N, A, 4] deltas (or [N, A, 4*(reg_max+1)] bin logits
    for LAreg and the released heads, cfg.bin_regression), centerness [N, A, 1] (quality logit);
    anchors [A, 4] for the padded batch,
    image_sizes: (h, w) each image had inside the padded batch, original_sizes: (h, w) of the input.
    Per level the top ``nms_pre`` locations by max class score x centerness; boxes decoded and clipped
    to the resized image; score threshold on the class score, final score = score x centerness
    (mmdet multiclass_nms with score_factors); class-wise NMS; at most ``max_dets``; rescaled.
    """
    cls_logits, reg, centerness, anchors = (
        outputs.cls_logits.float(),
        outputs.bbox_reg.float(),
        outputs.centerness.float(),
        anchors.float(),
    )
    strides = anchor_strides(num_anchors_per_level, anchors.device)
    delta_coder = DeltaXYWHBoxCoder()
    bin_coder = DistanceBinCoder(cfg.reg_max)
    results = []
    for i in range(cls_logits.shape[0]):
        scores_all = torch.sigmoid(cls_logits[i])  # [A, C]
        ctr_all = torch.sigmoid(centerness[i, :, 0])  # [A]
        keep_idx = []
        start = 0
        for n in num_anchors_per_level:
            if n > cfg.nms_pre:
                ranking = (scores_all[start : start + n] * ctr_all[start : start + n, None]).amax(dim=1)
                keep_idx.append(ranking.topk(cfg.nms_pre).indices + start)
            else:
                keep_idx.append(torch.arange(start, start + n, device=anchors.device))
            start += n
        idx = torch.cat(keep_idx)
        if cfg.bin_regression:  # LAreg, or the released heads: expectation x stride (docs/method.md §7.1)
            boxes = bin_coder.decode(anchors[idx], reg[i, idx], strides[idx])
        else:
            boxes = delta_coder.decode(anchors[idx], reg[i, idx])
        h, w = image_sizes[i]
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(0, w),
                boxes[:, 1].clamp(0, h),
                boxes[:, 2].clamp(0, w),
                boxes[:, 3].clamp(0, h),
            ],
            1,
        )
        scores, ctr = scores_all[idx], ctr_all[idx]  # [K, C], [K]
        cand, labels = torch.nonzero(scores > cfg.candidate_score_thresh, as_tuple=True)
        # mmdet: the centerness factor is applied after the score threshold
        final = scores[cand, labels] * ctr[cand]
        det_boxes = boxes[cand]
        keep = batched_nms(det_boxes, final, labels, cfg.nms_iou)[: cfg.max_dets]
        det_boxes, final, labels = det_boxes[keep], final[keep], labels[keep]
        oh, ow = original_sizes[i]
        scale = det_boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
        det_boxes = det_boxes * scale
        results.append({"boxes": det_boxes, "scores": final, "labels": labels.to(torch.int64)})
    return results
