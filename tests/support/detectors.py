"""Detectors with a random head that predicts something: what parity tests and benchmarks need when no
trained weights exist."""

from __future__ import annotations

import torch

from xscreen.model.detector import ATSSDetector


def sharpen_head(
    det: ATSSDetector, std: float = 0.05, cls_bias: float = -2.0, scale_step: float = 0.0
) -> None:
    """Redraw a random detector's head convolutions from N(0, std) and set the class bias, in place.

    Untrained weights then give confident, varied predictions (and LA weights away from 0.5), which
    parity tests and benchmarks need when no trained weights exist. With ``scale_step``, level i's
    Scale becomes 1 + scale_step * i (LAreg's softmax sees it). Draws from torch's global RNG, head
    modules in order.
    """
    with torch.no_grad():
        for m in det.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=std)
        det.head.atss_cls.bias.fill_(cls_bias)
        if scale_step:
            for i, s in enumerate(det.head.scales):
                s.scale.fill_(1.0 + scale_step * i)
