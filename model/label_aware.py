"""Label-aware mechanism (paper Sec. IV-C..E, Eq. 4-7; docs/method.md §3-4): LAcls, LAreg reweighting.

Per FPN level with head input x: detach x into a leaf x0, run the first prediction on x0, build one-hot
label maps (assigned labels in training, arg-max pseudo-labels at inference), take
g = d/dx0 sum(y * onehot(label)) as vector-Jacobian products of that one forward, and reweight
x_new = a*x + b*sigmoid(g1)*x - c*sigmoid(g2)*x. The weights are constants for the optimiser.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from xscreen.model.config import DetectorConfig
from xscreen.model.head import ATSSHead, HeadOutputs
from xscreen.model.timing import sync


def _leaf(x: Tensor) -> Tensor:
    # inference_mode tensors cannot enter autograd: copy them out (we are outside inference mode here)
    return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


def cls_label_masks(probs: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """One-hot masks (label, misleading label) for class probabilities [N, C, H, W].

    labels: [N, H, W] class index, -1 for background (all-zero row), or None for arg-max
    pseudo-labels (Sec. IV-D). The misleading label y* is the highest-scoring class other than the
    label; for a background location simply the highest-scoring class.
    """
    num_classes = probs.shape[1]
    if labels is None:
        labels = probs.argmax(dim=1)
    valid = labels >= 0
    onehot = F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * valid[:, None].to(probs.dtype)
    if num_classes == 1:  # no "other" class exists
        return onehot, torch.zeros_like(onehot)
    others = probs.masked_fill(onehot.bool(), float("-inf"))
    mislead = F.one_hot(others.argmax(dim=1), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    return onehot, mislead


def reg_label_masks(probs: Tensor, bins: Tensor | None) -> Tensor:
    """One-hot mask over bins for distance distributions [N, 4, B, H, W].

    bins: [N, 4, H, W] bin holding the target distance, -1 where the location has no target, or
    None for the arg-max bin (inference).
    """
    num_bins = probs.shape[2]
    if bins is None:
        bins = probs.argmax(dim=2)
    valid = bins >= 0
    onehot = F.one_hot(bins.clamp(min=0), num_bins).permute(0, 1, 4, 2, 3).to(probs.dtype)
    return onehot * valid[:, :, None].to(probs.dtype)


def _vjp(
    outputs: list[Tensor], inputs: list[Tensor], masks: list[list[Tensor]], batched: bool
) -> list[list[Tensor]]:
    """d/d inputs of sum(outputs * mask) for each mask set -> [mask set][level] gradients."""
    if len(masks) == 1 or not batched:
        grads = []
        for i, m in enumerate(masks):
            grads.append(list(torch.autograd.grad(outputs, inputs, m, retain_graph=i < len(masks) - 1)))
        return grads
    stacked = [torch.stack(level_masks) for level_masks in zip(*masks, strict=True)]
    g = torch.autograd.grad(outputs, inputs, stacked, is_grads_batched=True)
    return [[gl[k] for gl in g] for k in range(len(masks))]


def label_aware_weights(
    head: ATSSHead,
    feats: list[Tensor],
    mode: str,
    targets: list[Tensor] | None = None,
    reg_max: int = 16,
    batched: bool = False,
    timings: dict | None = None,
    bf16: bool = False,
    *,
    released: bool = False,
    skip_label_grad: bool = False,
) -> list[list[Tensor | None]]:
    """Label-aware weights per level: [[w1 per level], [w2 per level]] (LAcls) or [[w1 per level]] (LAreg).

    feats: head inputs P3..P7 [N, ch, H, W]. targets: per level, LAcls [N, H, W] class or -1;
    LAreg [N, 4, H, W] bin or -1; None -> pseudo-labels. Works under no_grad / inference_mode:
    gradients are enabled locally on a copy of the features. Returned weights carry no graph.
    bf16: run the first prediction and the two gradient passes under bfloat16 autocast (opt-in speed
    mode, its outputs checked against fp32: docs/model.md); weights come back fp32.
    released: LAreg as the authors' released head (docs/method.md §7.6): y is a sigmoid per bin (not a
    softmax per side); in training, locations without a target use bin 0 and a level without any
    positive in the batch uses the arg-max bin everywhere. skip_label_grad (LAcls): the label
    gradient's pass is not run and w1 comes back as None per level; for Eq. 7 with b = 0 it is
    multiplied by 0 (docs/method.md §7.5), so the result is the same at about half the gradient cost.
    """
    device = feats[0].device
    t0 = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        x0 = [_leaf(x) for x in feats]
        if mode == "cls":
            probs = [torch.sigmoid(head.cls_logits(x)) for x in x0]  # [N, C, H, W]
        elif mode == "reg":
            probs = []
            for level, x in enumerate(x0):
                logits, _ = _reg_logits(head, x, level)
                n, _, h, w = logits.shape
                z = logits.reshape(n, 4, reg_max + 1, h, w)
                # [N, 4, B, H, W]: softmax per side (docs/method.md §4) or the released sigmoid per bin (§7.6)
                probs.append(torch.sigmoid(z) if released else F.softmax(z, dim=2))
        else:
            raise ValueError(f"unknown label-aware mode {mode!r}")
        with torch.no_grad():
            if mode == "cls":
                pairs = [
                    cls_label_masks(p, None if targets is None else t)
                    for p, t in _zip_targets(probs, targets)
                ]
                masks = (
                    [[m2 for _, m2 in pairs]]
                    if skip_label_grad
                    else [[m1 for m1, _ in pairs], [m2 for _, m2 in pairs]]
                )
            else:
                masks = [
                    [
                        reg_label_masks(p, _released_bins(t) if released else t)
                        for p, t in _zip_targets(probs, targets)
                    ]
                ]
        if timings is not None:
            sync(device)
            t1 = time.perf_counter()
            timings["head_first"] = timings.get("head_first", 0.0) + t1 - t0
            t0 = t1
        # d/dx0 sum(y * onehot) is the VJP of y with the one-hot mask as cotangent
        grads = _vjp(probs, x0, masks, batched)
    weights: list[list[Tensor | None]] = [[torch.sigmoid(g.float()) for g in gs] for gs in grads]
    if mode == "cls" and skip_label_grad:
        weights.insert(0, [None] * len(feats))
    if timings is not None:
        sync(device)
        timings["la_grad"] = timings.get("la_grad", 0.0) + time.perf_counter() - t0
    return weights


def _released_bins(bins: Tensor | None) -> Tensor | None:
    """Training bins as the released LAreg head uses them (docs/method.md §7.6): bin 0 where the location has
    no target, and None (the arg-max bin everywhere) for a level without any positive in the batch."""
    if bins is None or not bool((bins >= 0).any()):
        return None
    return bins.clamp(min=0)


def _zip_targets(probs: list[Tensor], targets: list[Tensor] | None):
    if targets is None:
        return [(p, None) for p in probs]
    return list(zip(probs, targets, strict=True))


def _reg_logits(head: ATSSHead, x: Tensor, level: int) -> tuple[Tensor, Tensor]:
    # first LAreg prediction: one pass of the regression tower (the repeat applies to the second one)
    return head.reg_outputs(x, level, repeat=1)


def reweight(x: Tensor, w: list[Tensor | None], coeffs: tuple[float, float, float]) -> Tensor:
    """Eq. 7: x_new = a*x + b*w1*x - c*w2*x (LAreg: w2 absent, c = 0). w1 may be None when b = 0
    (its gradient pass was skipped, docs/method.md §7.5): the term is then absent, as b * w1 * x = 0."""
    a, b, c = coeffs
    out = a * x
    if b != 0.0:
        if w[0] is None:
            raise ValueError("reweight: w1 was skipped but the coefficient b is not 0")
        out = out + b * w[0] * x
    if len(w) > 1:
        out = out - c * w[1] * x
    return out


def label_aware_forward(
    head: ATSSHead,
    feats: list[Tensor],
    cfg: DetectorConfig,
    targets: list[Tensor] | None = None,
    *,
    batched: bool = False,
    timings: dict | None = None,
    bf16: bool = False,
    skip_zero_terms: bool = True,
) -> list[HeadOutputs]:
    """First prediction -> LA weights -> second prediction on x_new (Eq. 7); the outputs of each level.

    cfg: an LA config (``la_mode`` cls or reg), read for ``la_coeffs``, ``reg_tower_repeat``,
    ``reg_max`` and ``head_style``. targets, batched, timings, bf16: as for ``label_aware_weights``.
    skip_zero_terms: with b = 0 (the released (1.5, 0, 1)) skip the label-gradient pass (same outputs).
    """
    if not cfg.uses_la:
        raise ValueError(f"config {cfg.name!r} has la_mode 'none': no Label-aware loop to run")
    weights = label_aware_weights(
        head,
        feats,
        cfg.la_mode,
        targets,
        cfg.reg_max,
        batched,
        timings,
        bf16,
        released=cfg.released,
        skip_label_grad=skip_zero_terms and cfg.skip_label_grad,
    )
    t0 = time.perf_counter()
    out = []
    for level, x in enumerate(feats):
        x_new = reweight(x, [ws[level] for ws in weights], cfg.la_coeffs)
        out.append(head.level_outputs(x_new, level, repeat=cfg.reg_tower_repeat))
    if timings is not None:
        sync(feats[0].device)
        timings["head_second"] = timings.get("head_second", 0.0) + time.perf_counter() - t0
    return out
