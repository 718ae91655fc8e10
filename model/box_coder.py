"""Box coders: delta xywh (ATSS, docs/method.md §2) and distance-to-sides bins (LAreg, docs/method.md §4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# mmdet DeltaXYWHBBoxCoder clamps dw/dh at |log(16/1000)| before exp.
BBOX_XFORM_CLIP = abs(math.log(16.0 / 1000.0))


class DeltaXYWHBoxCoder:
    """mmdet's DeltaXYWHBBoxCoder: means 0, stds (0.1, 0.1, 0.2, 0.2); plain widths (no +1)."""

    def __init__(self, stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)):
        self.stds = stds

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """[K, 4] anchors and target boxes (x1y1x2y2) -> [K, 4] deltas."""
        pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
        gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        gx, gy = boxes[:, 0] + 0.5 * gw, boxes[:, 1] + 0.5 * gh
        d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
        return d / d.new_tensor(self.stds)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """[..., 4] anchors and deltas -> [..., 4] x1y1x2y2 boxes (not clipped)."""
        d = deltas * deltas.new_tensor(self.stds)
        pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        px, py = anchors[..., 0] + 0.5 * pw, anchors[..., 1] + 0.5 * ph
        dw = d[..., 2].clamp(-BBOX_XFORM_CLIP, BBOX_XFORM_CLIP)
        dh = d[..., 3].clamp(-BBOX_XFORM_CLIP, BBOX_XFORM_CLIP)
        gx, gy = px + pw * d[..., 0], py + ph * d[..., 1]
        gw, gh = pw * dw.exp(), ph * dh.exp()
        return torch.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], dim=-1)


class DistanceBinCoder:
    """LAreg / GFL: 4 side distances from the anchor centre, in strides, as softmax over reg_max+1 bins."""

    def __init__(self, reg_max: int = 16):
        self.reg_max = reg_max

    def target_distances(self, anchors: Tensor, boxes: Tensor, strides: Tensor) -> Tensor:
        """[K, 4] (left, top, right, bottom) distances in units of stride, clamped into [0, reg_max)."""
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        d = torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy], dim=1)
        # GFL clamps to reg_max - 0.01 so that the right-hand bin of the DFL pair exists.
        return (d / strides[:, None]).clamp(min=0.0, max=self.reg_max - 0.01)

    def distances(self, bin_logits: Tensor) -> Tensor:
        """[..., 4*(reg_max+1)] logits -> [..., 4] expected distances (in strides)."""
        probs = F.softmax(bin_logits.reshape(*bin_logits.shape[:-1], 4, self.reg_max + 1), dim=-1)
        bins = torch.arange(self.reg_max + 1, device=bin_logits.device, dtype=probs.dtype)
        return (probs * bins).sum(-1)

    def decode(self, anchors: Tensor, bin_logits: Tensor, strides: Tensor) -> Tensor:
        """[..., 4] anchors, [..., 4*(reg_max+1)] logits, [...] strides -> [..., 4] x1y1x2y2 boxes."""
        d = self.distances(bin_logits) * strides[..., None]
        cx, cy = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
        return torch.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], dim=-1)
