"""Independent reference of the authors' released detector (docs/method.md §7), for the parity tests.

Plain torch functions that follow the released mmdetection code step by step (ResNet + FPN with
``add_extra_convs='on_output'``, ``ATSSLAclsHead`` / ``ATSSLAregHead`` forward_single, loss_single and
loss, _get_bboxes_single; plain ``ATSSHead``), reading a state dict in mmdetection's key names. Nothing
here imports xscreen.model: the tests compare the two. Only the ATSS assignment (matched GT per anchor)
is taken as an input; it has its own tests (tests/model/test_assigner.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.ops import batched_nms

STRIDES = (8, 16, 32, 64, 128)
REG_MAX = 16


# ----------------------------------------------------------------------------- backbone and neck


def backbone_fpn(sd: dict[str, Tensor], batch: Tensor, depth: int = 18) -> list[Tensor]:
    """ResNet (mmdet style 'pytorch', BN in eval) C3-C5 -> mmdet FPN P3-P7, P7 = conv(P6) without ReLU."""
    net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
    net.load_state_dict(
        {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}, strict=False
    )
    net.eval()
    x = net.maxpool(net.relu(net.bn1(net.conv1(batch))))
    c2 = net.layer1(x)
    c3 = net.layer2(c2)
    c4 = net.layer3(c3)
    c5 = net.layer4(c4)
    lat = [
        F.conv2d(c, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"])
        for i, c in enumerate((c3, c4, c5))
    ]
    for i in (2, 1):  # top-down: nearest upsampling to the lower level's size
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [
        F.conv2d(t, sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"], padding=1)
        for i, t in enumerate(lat)
    ]
    for i in (3, 4):  # extra convs on the previous output, stride 2, no activation before them
        w, b = sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"]
        outs.append(F.conv2d(outs[-1], w, b, stride=2, padding=1))
    return outs


# ----------------------------------------------------------------------------- head pieces


def _conv_module(x: Tensor, sd: dict, prefix: str) -> Tensor:
    """mmcv ConvModule(conv 3x3 without bias, GN(32), ReLU)."""
    x = F.conv2d(x, sd[prefix + ".conv.weight"], None, padding=1)
    x = F.group_norm(x, 32, sd[prefix + ".gn.weight"], sd[prefix + ".gn.bias"], eps=1e-5)
    return F.relu(x)


def _tower(x: Tensor, sd: dict, name: str, stacked: int) -> Tensor:
    for i in range(stacked):
        x = _conv_module(x, sd, f"bbox_head.{name}.{i}")
    return x


def _conv3(x: Tensor, sd: dict, name: str) -> Tensor:
    return F.conv2d(x, sd[f"bbox_head.{name}.weight"], sd[f"bbox_head.{name}.bias"], padding=1)


def _reg_conf(bbox_pred: Tensor, sd: dict, stats: str) -> Tensor:
    n, _, h, w = bbox_pred.shape
    prob = F.softmax(bbox_pred.reshape(n, 4, REG_MAX + 1, h, w), dim=2)
    if stats == "max_mean":
        feat = prob.max(dim=2)[0] - prob.mean(dim=2)
    else:
        top, _ = prob.topk(4, dim=2)
        feat = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(n, -1, h, w)
    hid = F.relu(F.conv2d(feat, sd["bbox_head.reg_conf.0.weight"], sd["bbox_head.reg_conf.0.bias"]))
    return F.conv2d(hid, sd["bbox_head.reg_conf.2.weight"], sd["bbox_head.reg_conf.2.bias"])


def atss_forward_single(x: Tensor, sd: dict, level: int, stacked: int):
    """Plain mmdet ATSSHead: (cls_score, bbox_pred deltas x scale, centerness)."""
    cls = _conv3(_tower(x, sd, "cls_convs", stacked), sd, "atss_cls")
    reg_feat = _tower(x, sd, "reg_convs", stacked)
    bbox = _conv3(reg_feat, sd, "atss_reg") * sd[f"bbox_head.scales.{level}.scale"]
    return cls, bbox, _conv3(reg_feat, sd, "atss_centerness")


def _second_prediction(x_new: Tensor, sd: dict, level: int, stacked: int, stats: str):
    cls = _conv3(_tower(x_new, sd, "cls_convs", stacked), sd, "atss_cls")
    reg_feat = _tower(_tower(x_new, sd, "reg_convs", stacked), sd, "reg_convs", stacked)  # twice
    bbox = _conv3(reg_feat, sd, "atss_reg") * sd[f"bbox_head.scales.{level}.scale"]
    return cls, bbox, _reg_conf(bbox, sd, stats)


def lacls_forward_single(
    x: Tensor, sd: dict, level: int, stacked: int, num_classes: int, labels: Tensor | None, stats: str
):
    """ATSSLAclsHead.forward_single, including its in-place overwrite of the saved sigmoid output.

    labels: [N * H * W] (image, row, column) class per location, num_classes for background; None at test.
    """
    with torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        out = _conv3(_tower(inputs, sd, "cls_convs", stacked), sd, "atss_cls")
        out = out.permute(0, 2, 3, 1).reshape(-1, num_classes).contiguous().sigmoid()
        label_copy = out.max(dim=-1)[1] if labels is None else labels
        prob_outputs = F.one_hot(label_copy, num_classes + 1)[..., :-1].float()
        out_copy = out.detach().data
        out_copy[prob_outputs.bool()] = 0  # also overwrites what autograd saved for sigmoid's backward
        confuse_label = out_copy.max(dim=-1)[1]
        confuse_outputs = F.one_hot(confuse_label, num_classes + 1)[..., :-1].float()
        cls_aware = torch.autograd.grad(out, inputs, prob_outputs.clone(), retain_graph=True)[0].sigmoid()
        confused = torch.autograd.grad(out, inputs, confuse_outputs.clone(), retain_graph=True)[0].sigmoid()
    w = 1 * cls_aware - 1 * confused
    return _second_prediction((1 + w) * x, sd, level, stacked, stats)


def lareg_forward_single(
    x: Tensor,
    sd: dict,
    level: int,
    stacked: int,
    target_bins: Tensor | None,
    stats: str,
):
    """ATSSLAregHead.forward_single. target_bins: [N * H * W, 4] floor bins with 0 at non-positives, or
    None (test time, or a level without any positive: the arg-max bin everywhere)."""
    with torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        reg = _conv3(_tower(inputs, sd, "reg_convs", stacked), sd, "atss_reg")
        reg = reg * sd[f"bbox_head.scales.{level}.scale"]
        reg = reg.permute(0, 2, 3, 1).reshape(-1, REG_MAX + 1).sigmoid()
        corners = reg.max(dim=-1)[1] if target_bins is None else target_bins.reshape(-1)
        prob_regs = F.one_hot(corners, REG_MAX + 1).float()
        reg_aware = torch.autograd.grad(reg, inputs, prob_regs.clone(), retain_graph=True)[0].sigmoid()
    return _second_prediction(0.5 * x + x * reg_aware, sd, level, stacked, stats)


# ----------------------------------------------------------------------------- anchors, boxes


def level_anchors(h: int, w: int, stride: int) -> Tensor:
    """mmdet AnchorGenerator, one square anchor of side 8 * stride centred at (x * stride, y * stride)."""
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    cx, cy = xs.reshape(-1).float(), ys.reshape(-1).float()
    half = 8 * stride / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def anchor_centre(a: Tensor) -> Tensor:
    return torch.stack([(a[:, 2] + a[:, 0]) / 2, (a[:, 3] + a[:, 1]) / 2], dim=-1)


def integral(x: Tensor) -> Tensor:
    p = F.softmax(x.reshape(-1, REG_MAX + 1), dim=1)
    return F.linear(p, torch.linspace(0, REG_MAX, REG_MAX + 1)).reshape(-1, 4)


def distance2bbox(points: Tensor, d: Tensor, max_shape=None) -> Tensor:
    x1, y1 = points[:, 0] - d[:, 0], points[:, 1] - d[:, 1]
    x2, y2 = points[:, 0] + d[:, 2], points[:, 1] + d[:, 3]
    if max_shape is not None:
        x1, x2 = x1.clamp(min=0, max=max_shape[1]), x2.clamp(min=0, max=max_shape[1])
        y1, y2 = y1.clamp(min=0, max=max_shape[0]), y2.clamp(min=0, max=max_shape[0])
    return torch.stack([x1, y1, x2, y2], -1)


def bbox2distance(points: Tensor, bbox: Tensor, max_dis: float, eps: float = 0.1) -> Tensor:
    d = torch.stack(
        [
            points[:, 0] - bbox[:, 0],
            points[:, 1] - bbox[:, 1],
            bbox[:, 2] - points[:, 0],
            bbox[:, 3] - points[:, 1],
        ],
        -1,
    )
    return d.clamp(min=0, max=max_dis - eps)


_STDS = (0.1, 0.1, 0.2, 0.2)


def delta_encode(anchors: Tensor, gt: Tensor) -> Tensor:
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
    return d / torch.tensor(_STDS)


def delta_decode(anchors: Tensor, deltas: Tensor) -> Tensor:
    d = deltas * torch.tensor(_STDS)
    clip = abs(math.log(16 / 1000))
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = pw * d[:, 2].clamp(-clip, clip).exp(), ph * d[:, 3].clamp(-clip, clip).exp()
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], -1)


# ----------------------------------------------------------------------------- test time


def get_bboxes_single(
    cls_scores: list[Tensor],
    bbox_preds: list[Tensor],
    centernesses: list[Tensor],
    img_shape: tuple[int, int],
    scale_factor: tuple[float, float],
    nms_pre: int = 1000,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_per_img: int = 100,
):
    """_get_bboxes_single + multiclass_nms for one image: per-level [C,H,W], [68,H,W], [1,H,W] maps."""
    boxes_l, scores_l, ctr_l = [], [], []
    for cls, bbox, ctr, stride in zip(cls_scores, bbox_preds, centernesses, STRIDES, strict=True):
        anchors = level_anchors(cls.shape[1], cls.shape[2], stride)
        scores = cls.permute(1, 2, 0).reshape(-1, cls.shape[0]).sigmoid()
        dist = integral(bbox.permute(1, 2, 0)) * stride
        c = ctr.permute(1, 2, 0).reshape(-1).sigmoid()
        if 0 < nms_pre < scores.shape[0]:
            _, top = (scores * c[:, None]).max(dim=1)[0].topk(nms_pre)
            anchors, dist, scores, c = anchors[top], dist[top], scores[top], c[top]
        boxes_l.append(distance2bbox(anchor_centre(anchors), dist, max_shape=img_shape))
        scores_l.append(scores)
        ctr_l.append(c)
    boxes = torch.cat(boxes_l)
    boxes = boxes / boxes.new_tensor([scale_factor[0], scale_factor[1], scale_factor[0], scale_factor[1]])
    scores, ctr = torch.cat(scores_l), torch.cat(ctr_l)
    valid = scores > score_thr  # threshold on the class score, then the quality factor
    idx, labels = valid.nonzero(as_tuple=True)
    final = scores[idx, labels] * ctr[idx]
    keep = batched_nms(boxes[idx], final, labels, iou_thr)[:max_per_img]
    return boxes[idx][keep], final[keep], labels[keep]


# ----------------------------------------------------------------------------- losses


def _focal(pred: Tensor, target_onehot: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """mmdet py_sigmoid_focal_loss, elementwise."""
    p = pred.sigmoid()
    pt = (1 - p) * target_onehot + p * (1 - target_onehot)
    w = (alpha * target_onehot + (1 - alpha) * (1 - target_onehot)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target_onehot, reduction="none") * w


def _giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    a1, a2 = (pred[:, 2:] - pred[:, :2]).prod(-1), (target[:, 2:] - target[:, :2]).prod(-1)
    union = (a1 + a2 - overlap).clamp(min=eps)
    ious = overlap / union
    elt, erb = torch.min(pred[:, :2], target[:, :2]), torch.max(pred[:, 2:], target[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(-1).clamp(min=eps)
    return 1 - (ious - (enclose - union) / enclose)


def _centerness_target(anchors: Tensor, gts: Tensor) -> Tensor:
    cx, cy = (anchors[:, 2] + anchors[:, 0]) / 2, (anchors[:, 3] + anchors[:, 1]) / 2
    lr = torch.stack([cx - gts[:, 0], gts[:, 2] - cx], 1)
    tb = torch.stack([cy - gts[:, 1], gts[:, 3] - cy], 1)
    return torch.sqrt((lr.min(-1)[0] / lr.max(-1)[0]) * (tb.min(-1)[0] / tb.max(-1)[0]))


def level_labels(matched: list[Tensor], gt_labels: list[Tensor], num_classes: int) -> Tensor:
    """Per image [A] matched GT index (-1 background) -> labels [N, A], num_classes for background
    (mmdet _get_target_single)."""
    out = []
    for m, lab in zip(matched, gt_labels, strict=True):
        lab_i = torch.full(m.shape, num_classes, dtype=torch.long)
        pos = (m >= 0).nonzero().squeeze(1)
        if pos.numel():
            lab_i[pos] = lab[m[pos]]
        out.append(lab_i)
    return torch.stack(out)


def encode_targets(anchors: Tensor, matched: list[Tensor], gt_boxes: list[Tensor]) -> Tensor:
    """[N, A, 4] delta-encoded GT of each positive anchor (zeros elsewhere), as mmdet stores them."""
    out = torch.zeros(len(matched), anchors.shape[0], 4)
    for i, (m, boxes) in enumerate(zip(matched, gt_boxes, strict=True)):
        pos = (m >= 0).nonzero().squeeze(1)
        if pos.numel():
            out[i, pos] = delta_encode(anchors[pos], boxes[m[pos]])
    return out


def released_loss(
    outs: list[tuple[Tensor, Tensor, Tensor]],
    labels: Tensor,
    bbox_targets: Tensor,
    num_classes: int,
    quality: str = "centerness",
) -> dict[str, Tensor]:
    """ATSSLA*Head.loss: per level loss_single, then the divisions of loss(). labels [N, A] (num_classes
    = background), bbox_targets [N, A, 4] deltas; levels in P3..P7 order, anchors row-major."""
    n = labels.shape[0]
    num_total = max(float(sum(max(int((labels[i] < num_classes).sum()), 1) for i in range(n))), 1.0)
    sizes = [o[0].shape[2] * o[0].shape[3] for o in outs]
    start, parts = 0, []
    for (cls, bbox, ctr), stride, size in zip(outs, STRIDES, sizes, strict=True):
        h, w = cls.shape[2], cls.shape[3]
        anchors = level_anchors(h, w, stride).repeat(n, 1)
        lab = labels[:, start : start + size].reshape(-1)
        tgt = bbox_targets[:, start : start + size].reshape(-1, 4)
        start += size
        cls = cls.permute(0, 2, 3, 1).reshape(-1, num_classes)
        bbox = bbox.permute(0, 2, 3, 1).reshape(-1, 4 * (REG_MAX + 1))
        ctr = ctr.permute(0, 2, 3, 1).reshape(-1)
        onehot = F.one_hot(lab, num_classes + 1)[:, :num_classes].float()
        loss_cls = _focal(cls, onehot).sum() / num_total
        pos = ((lab >= 0) & (lab < num_classes)).nonzero().squeeze(1)
        if len(pos):
            a = anchors[pos]
            centres = anchor_centre(a) / stride
            pred_box = distance2bbox(centres, integral(bbox[pos]))
            tgt_box = delta_decode(a, tgt[pos]) / stride
            corners = bbox2distance(centres, tgt_box, REG_MAX).reshape(-1).floor().long()
            if quality == "iou":  # earliest version: bbox_overlaps(pred.detach(), target, is_aligned)
                lt = torch.max(pred_box.detach()[:, :2], tgt_box[:, :2])
                rb = torch.min(pred_box.detach()[:, 2:], tgt_box[:, 2:])
                ov = (rb - lt).clamp(min=0).prod(-1)
                ar = (pred_box.detach()[:, 2:] - pred_box.detach()[:, :2]).prod(-1)
                at = (tgt_box[:, 2:] - tgt_box[:, :2]).prod(-1)
                q = ov / (ar + at - ov).clamp(min=1e-6)
            else:
                q = _centerness_target(a, delta_decode(a, tgt[pos]))
            loss_bbox = 2.0 * (_giou_loss(pred_box, tgt_box) * q).sum() / 1.0
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], q, reduction="none").sum() / num_total
            bin_w = q[:, None, None].expand(-1, 4, REG_MAX + 1).reshape(-1, REG_MAX + 1)
            pred_corners = bbox[pos].reshape(-1, REG_MAX + 1)
            loss_d = (_focal(pred_corners, F.one_hot(corners, REG_MAX + 1).float()) * bin_w).sum() / 4.0
            q_sum = q.sum()
        else:
            loss_bbox = bbox.sum() * 0
            loss_ctr = ctr.sum() * 0
            loss_d = bbox.sum() * 0
            q_sum = torch.tensor(0.0)
        parts.append((loss_cls, loss_bbox, loss_ctr, loss_d, q_sum))
    avg = float(sum(p[4] for p in parts))
    avg = 1.0 if avg < 1e-12 else avg
    return {
        "loss_cls": sum(p[0] for p in parts),
        "loss_bbox": sum(p[1] / avg for p in parts),
        "loss_centerness": sum(p[2] for p in parts),
        "loss_d": sum(p[3] / avg for p in parts),
    }


def training_bins(anchors_l: Tensor, labels_l: Tensor, targets_l: Tensor, stride: int, num_classes: int):
    """The released LAreg training labels of one level: [N*h*w, 4] (0 at non-positives), None if the
    level has no positive in the batch."""
    lab = labels_l.reshape(-1)
    pos = ((lab >= 0) & (lab < num_classes)).nonzero().squeeze(1)
    if not len(pos):
        return None
    corners = torch.zeros(lab.shape[0], 4, dtype=torch.long)
    a = anchors_l[pos]
    centres = anchor_centre(a) / stride
    tgt_box = delta_decode(a, targets_l.reshape(-1, 4)[pos]) / stride
    corners[pos] = bbox2distance(centres, tgt_box, REG_MAX).floor().long()
    return corners
