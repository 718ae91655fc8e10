"""Anchors: one square anchor per feature cell, side 8 x stride, strides 8..128 (P3..P7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)  # P3..P7
ANCHOR_SCALE = 8  # mmdet ATSS: octave_base_scale=8, scales_per_octave=1, ratios=[1.0]


def feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of P3..P7 for a padded input of height x width (a multiple of 32).

    P3-P5 are exact strides of the ResNet; P6 and P7 are 3x3 stride-2 pad-1 convs: ceil(size / 2).
    """
    if height % 32 or width % 32:
        raise ValueError(f"padded input must be a multiple of 32, got {height}x{width}")
    sizes = [(height // s, width // s) for s in STRIDES[:3]]
    for _ in STRIDES[3:]:
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def anchors_for_level(h: int, w: int, stride: int, device=None, dtype=torch.float32) -> Tensor:
    """[h*w, 4] x1y1x2y2 anchors, row-major over cells; cell (x, y) centred at (x*stride, y*stride).

    Centre offset 0 as in the authors' mmdetection code (docs/method.md §2).
    """
    xs = torch.arange(w, device=device, dtype=dtype) * stride
    ys = torch.arange(h, device=device, dtype=dtype) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    half = ANCHOR_SCALE * stride / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def generate_anchors(
    sizes: list[tuple[int, int]], device=None, dtype=torch.float32
) -> tuple[Tensor, list[int]]:
    """All levels concatenated P3..P7 -> (anchors [A, 4], number of anchors per level)."""
    per_level = [anchors_for_level(h, w, s, device, dtype) for (h, w), s in zip(sizes, STRIDES, strict=True)]
    return torch.cat(per_level, dim=0), [a.shape[0] for a in per_level]


def anchor_strides(num_anchors_per_level: list[int], device=None, dtype=torch.float32) -> Tensor:
    """[A] stride of each anchor's level."""
    return torch.cat(
        [
            torch.full((n,), float(s), device=device, dtype=dtype)
            for n, s in zip(num_anchors_per_level, STRIDES, strict=True)
        ]
    )
