"""ATSS head: classification and regression towers, per-level scales, centerness or the released reg_conf
quality branch (docs/method.md §2, §7.2)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xscreen.model.config import REG_CONF_TOPK


class HeadOutputs(NamedTuple):
    """The head's three outputs, by name (same names as the ONNX graph outputs, model.onnx_export).

    Per level (``ATSSHead.level_outputs``) each is a map [N, K, H, W]; for a batch
    (``ATSSHead.flatten_levels``) levels P3..P7 are concatenated, cells row-major: [N, A, K].
    """

    cls_logits: Tensor  # K = C class logits (sigmoid)
    bbox_reg: Tensor  # K = 4 deltas, or 4 x (reg_max + 1) bin logits for LAreg (cfg.reg_channels)
    centerness: Tensor  # K = 1 quality logit (centerness conv, or the released reg_conf branch)


class Scale(nn.Module):
    """A learnable scalar multiplying a level's regression output (mmcv ``Scale``)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, stacked_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(stacked_convs):
        # mmdet ConvModule with GN: conv without bias, GroupNorm(32), ReLU
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(32, channels),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


def reg_conf_statistics(bin_logits: Tensor, stats: str = "max_mean") -> Tensor:
    """Per-side statistics of the bin softmax that the released reg_conf branch reads (docs/method.md §7.2).

    bin_logits: [N, 4 * B, H, W], side-major (channel = side * B + bin). ``max_mean``: max - mean per
    side -> [N, 4, H, W] (final version); ``topk_mean``: the top-4 probabilities of each side and their
    mean -> [N, 4 * 5, H, W], side-major (earliest version).
    """
    n, k, h, w = bin_logits.shape
    prob = F.softmax(bin_logits.reshape(n, 4, k // 4, h, w), dim=2)
    if stats == "max_mean":
        return prob.amax(dim=2) - prob.mean(dim=2)
    top = prob.topk(REG_CONF_TOPK, dim=2).values
    return torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(n, -1, h, w)


class ATSSHead(nn.Module):
    """Two towers of ``stacked_convs`` x [3x3 conv, GroupNorm(32), ReLU] shared over P3..P7.

    ``atss_cls``: C sigmoid logits (prior 0.01); ``atss_reg``: 4 deltas, or 4 x (reg_max+1) bin
    logits (LAreg, released heads); quality logit: ``atss_centerness`` (3x3 conv on the regression
    tower) or, with ``reg_conf_inputs`` > 0, the released ``reg_conf`` branch (docs/method.md §7.2):
    Sequential(1x1 conv reg_conf_inputs -> reg_conf_channels, ReLU, 1x1 conv -> 1) on the statistics of
    the scaled bin softmax (``reg_conf_statistics``). Module names equal mmdetection's
    (``cls_convs``/``reg_convs`` as flat Sequentials of conv, gn, relu; ``atss_cls``, ``atss_reg``,
    ``reg_conf.0``/``reg_conf.2``, ``scales.N.scale``; model/mmdet_keys.py maps them). The Label-aware
    loop that calls these pieces twice lives in model/label_aware.py.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        stacked_convs: int = 4,
        reg_channels: int = 4,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        *,
        reg_conf_inputs: int = 0,
        reg_conf_channels: int = 16,
        reg_conf_stats: str = "max_mean",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_channels = reg_channels
        self.reg_conf_stats = reg_conf_stats
        self.cls_convs = _tower(channels, stacked_convs)
        self.reg_convs = _tower(channels, stacked_convs)
        self.atss_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(channels, reg_channels, 3, padding=1)
        self.atss_centerness: nn.Conv2d | None = None
        self.reg_conf: nn.Sequential | None = None
        if reg_conf_inputs:
            self.reg_conf = nn.Sequential(
                nn.Conv2d(reg_conf_inputs, reg_conf_channels, 1),
                nn.ReLU(),
                nn.Conv2d(reg_conf_channels, 1, 1),
            )
        else:
            self.atss_centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        # mmdet ATSSHead.init_weights: normal(std=0.01) convs, classifier bias from prior 0.01
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def cls_logits(self, x: Tensor) -> Tensor:
        """[N, ch, H, W] -> [N, C, H, W] class logits."""
        return self.atss_cls(self.cls_convs(x))

    def reg_outputs(self, x: Tensor, level: int, repeat: int = 1) -> tuple[Tensor, Tensor]:
        """[N, ch, H, W] -> (regression [N, R, H, W] scaled per level, quality logit [N, 1, H, W]).

        ``repeat`` > 1 applies the regression tower that many times in sequence (the paper's LA
        second prediction, Sec. IV-A: "the regression branch repeats twice").
        """
        feat = x
        for _ in range(repeat):
            feat = self.reg_convs(feat)
        reg = self.scales[level](self.atss_reg(feat))
        if self.reg_conf is not None:  # docs/method.md §7.2: quality from the scaled bin distribution
            return reg, self.reg_conf(reg_conf_statistics(reg, self.reg_conf_stats))
        return reg, self.atss_centerness(feat)

    def level_outputs(self, x: Tensor, level: int, repeat: int = 1) -> HeadOutputs:
        """One level's head input [N, ch, H, W] -> its outputs (``repeat``: see ``reg_outputs``)."""
        reg, ctr = self.reg_outputs(x, level, repeat)
        return HeadOutputs(self.cls_logits(x), reg, ctr)

    def forward_plain(self, feats: list[Tensor]) -> list[HeadOutputs]:
        """Plain ATSS: the outputs of each level."""
        return [self.level_outputs(x, level) for level, x in enumerate(feats)]

    def flatten_levels(self, per_level: list[HeadOutputs], batch_size: int) -> HeadOutputs:
        """Per-level maps [N, K, h, w] -> [N, A, K]: levels concatenated, cells row-major (anchor order).

        The channel counts are Python ints, so a traced (ONNX) graph has static channel axes.
        """

        def flat(t: Tensor, k: int) -> Tensor:  # [N, K, H, W] -> [N, H*W, K]
            return t.permute(0, 2, 3, 1).reshape(batch_size, -1, k)

        return HeadOutputs(
            cls_logits=torch.cat([flat(o.cls_logits, self.num_classes) for o in per_level], dim=1),
            bbox_reg=torch.cat([flat(o.bbox_reg, self.reg_channels) for o in per_level], dim=1),
            centerness=torch.cat([flat(o.centerness, 1) for o in per_level], dim=1),
        )
