"""Image geometry shared by training, evaluation and inference: keep-ratio resize, normalise, pad."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ImageNet statistics on the 0..255 scale (the authors' mmdetection config normalises the
# converted 3-channel image with these, to_rgb=True; docs/method.md §1 fixes our channel order).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def fit_size(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """Target (h, w) that keeps the aspect ratio and fits inside max_size x min_size.

    mmdetection's ``Resize(img_scale=(1333, 800), keep_ratio=True)``: scale so the short side
    reaches ``min_size`` unless that makes the long side exceed ``max_size``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize_to_fit(
    image: Tensor, boxes: Tensor | None = None, min_size: int = 800, max_size: int = 1333
) -> tuple[Tensor, Tensor | None]:
    """Resize a [3, H, W] float image (and its [K, 4] x1y1x2y2 boxes) to ``fit_size``.

    Idempotent: an image that already has its fitted size is returned unchanged, so the
    data loader may resize in its workers and the model's own transform then does nothing.
    """
    h, w = image.shape[-2:]
    th, tw = fit_size(h, w, min_size, max_size)
    if (th, tw) == (h, w):
        return image, boxes
    out = F.interpolate(image[None], size=(th, tw), mode="bilinear", align_corners=False)[0]
    if boxes is not None and boxes.numel():
        scale = boxes.new_tensor([tw / w, th / h, tw / w, th / h])
        boxes = boxes * scale
    return out, boxes


def normalize(image: Tensor, mean=PIXEL_MEAN, std=PIXEL_STD) -> Tensor:
    """(image - mean) / std per channel, for a [3, H, W] or [N, 3, H, W] 0..255 image."""
    m = image.new_tensor(mean).view(-1, 1, 1)
    s = image.new_tensor(std).view(-1, 1, 1)
    return (image - m) / s


def network_image(image, min_size: int = 800, max_size: int = 1333) -> Tensor:
    """A converted [H, W, 3] float array (docs/method.md §1, 0..255) -> the normalised, fitted [3, h, w].

    What the network sees of one scan before batching (the ONNX backend and int8 calibration).
    """
    # a strided [3, H, W] view, not a contiguous copy of the full-size scan: resize reads it as it is
    t = torch.from_numpy(image.astype("float32", copy=False)).permute(2, 0, 1)
    t, _ = resize_to_fit(t, None, min_size, max_size)
    return normalize(t)


def padded_size(height: int, width: int, size_divisor: int = 32) -> tuple[int, int]:
    """(h, w) rounded up to multiples of ``size_divisor``: the size ``pad_batch`` gives an image."""
    return (
        int(math.ceil(height / size_divisor) * size_divisor),
        int(math.ceil(width / size_divisor) * size_divisor),
    )


def group_by_padded_size(shapes, size_divisor: int = 32) -> list[list[int]]:
    """Indices of images that pad to the same size, grouped: one sub-batch per padded size.

    ``shapes``: per image a shape or size whose last two entries are (h, w), e.g. ``tensor.shape``
    of a [3, H, W] image. Groups come in order of first appearance, indices ascending inside each.
    Inference runs each group as one batch, so a scan's result does not depend on its neighbours
    (GroupNorm statistics and border features would otherwise see their extra padding).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        key = padded_size(int(shape[-2]), int(shape[-1]), size_divisor)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def pad_batch(images: list[Tensor], size_divisor: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack [3, H_i, W_i] images into [N, 3, H, W], zero-padded bottom/right to a multiple of 32.

    Returns the batch and each image's (h, w) before padding.
    """
    if not images:
        raise ValueError("pad_batch needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h, max_w = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), size_divisor)
    batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def hflip(image: Tensor, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Horizontal flip of a [3, H, W] image and its x1y1x2y2 boxes."""
    w = image.shape[-1]
    image = image.flip(-1)
    if boxes is not None and boxes.numel():
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image, boxes
