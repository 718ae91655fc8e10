"""Label-aware gradients written as ordinary forward operators (no autograd), so LA exports to ONNX.

The Label-aware mechanism (docs/method.md §3/§4, paper Sec. IV-C..E) needs, at inference, the
vector-Jacobian product ``d/dx0 sum(y * onehot)`` of a head tower + classifier with respect to the
tower's input. ONNX has no autograd, so this module spells the backward pass out:

- forward through ``[Conv2d 3x3, GroupNorm, ReLU] x n`` + classifier ``Conv2d``, keeping what
  the backward needs (GroupNorm's normalised activations and 1/std, the ReLU masks);
- output derivative: sigmoid ``y (1 - y) * onehot`` (LAcls) or, for a per-side softmax over bins
  (LAreg), ``y_b (onehot - y)``;
- conv backward as a plain convolution with the kernel transposed (in/out channels swapped) and
  flipped spatially, padding ``dilation * (k - 1) - padding`` (= the gradient of a stride-1 conv);
- GroupNorm backward: ``dz = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` per group,
  with ``dxhat = dn * gamma``.

Both LAcls gradients (label and misleading class y*) share one forward and are run through the
backward as a single stacked batch. Everything here is made of Conv / elementwise / reduce /
ArgMax / Equal operators, which torch.onnx exports; ``tests/model/test_onnx_explicit_grad.py`` checks
it against ``torch.autograd`` in float32 and float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _flatten_chain(module: nn.Module) -> list[nn.Module]:
    """Leaf modules of a (possibly nested) nn.Sequential, in execution order."""
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_flatten_chain(child))
        return out
    return [module]


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.stride != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(
            "explicit gradients support stride-1, groups=1, zero-padded Conv2d only "
            f"(got stride={conv.stride}, groups={conv.groups}, padding_mode={conv.padding_mode})"
        )
    if isinstance(conv.padding, str):
        raise ValueError("explicit gradients need numeric Conv2d padding, not 'same'/'valid'")
    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True):
        if 2 * p != d * (k - 1):
            raise ValueError(f"explicit gradients need size-preserving convs (kernel {k}, padding {p})")


def backward_kernel(conv: nn.Conv2d) -> Tensor:
    """The kernel that turns a stride-1 convolution into its input gradient: in/out swapped, taps flipped."""
    return conv.weight.transpose(0, 1).flip(2, 3)  # [C_in, C_out, kh, kw]


def conv_input_grad(grad_out: Tensor, conv: nn.Conv2d, kernel: Tensor | None = None) -> Tensor:
    """Gradient of sum(grad_out * conv(x)) w.r.t. x for a stride-1, size-preserving Conv2d.

    Equals ``conv_transpose2d(grad_out, W, padding=p)``; written as a normal convolution with
    :func:`backward_kernel` (pass it precomputed as ``kernel`` to avoid re-deriving it), padding
    ``dilation * (k - 1) - p``, which ONNX Runtime runs with its fastest Conv kernels.
    """
    weight = backward_kernel(conv) if kernel is None else kernel
    geometry = zip(conv.kernel_size, conv.padding, conv.dilation, strict=True)
    pad = tuple(d * (k - 1) - p for k, p, d in geometry)
    return F.conv2d(grad_out, weight, None, 1, pad, conv.dilation)


@dataclass
class _GNCache:
    xhat: Tensor  # [N, G, C/G, H, W] normalised activations
    rstd: Tensor  # [N, G, 1, 1, 1]
    gn: nn.GroupNorm


def group_norm_forward(z: Tensor, gn: nn.GroupNorm) -> tuple[Tensor, _GNCache]:
    """GroupNorm written out (biased variance, like torch) so its statistics can be reused backward."""
    n, c, h, w = z.shape
    g = gn.num_groups
    zg = z.reshape(n, g, c // g, h, w)
    mean = zg.mean(dim=(2, 3, 4), keepdim=True)
    var = (zg - mean).pow(2).mean(dim=(2, 3, 4), keepdim=True)
    rstd = torch.rsqrt(var + gn.eps)
    xhat = (zg - mean) * rstd
    out = xhat.reshape(n, c, h, w)
    if gn.affine:
        out = out * gn.weight.view(1, c, 1, 1) + gn.bias.view(1, c, 1, 1)
    return out, _GNCache(xhat=xhat, rstd=rstd, gn=gn)


def group_norm_input_grad(grad_out: Tensor, cache: _GNCache, reps: int = 1) -> Tensor:
    """Gradient of sum(grad_out * GroupNorm(z)) w.r.t. z.

    ``grad_out`` may stack ``reps`` cotangents along the batch axis ([reps * N, C, H, W]); the
    cached statistics of the N images are then shared by every stacked copy.
    """
    gn = cache.gn
    rn, c, h, w = grad_out.shape
    n = rn // reps
    g = gn.num_groups
    dn = grad_out * gn.weight.view(1, c, 1, 1) if gn.affine else grad_out
    dxhat = dn.reshape(reps, n, g, c // g, h, w)
    xhat, rstd = cache.xhat.unsqueeze(0), cache.rstd.unsqueeze(0)
    mean_d = dxhat.mean(dim=(3, 4, 5), keepdim=True)
    mean_dx = (dxhat * xhat).mean(dim=(3, 4, 5), keepdim=True)
    dz = rstd * (dxhat - mean_d - xhat * mean_dx)
    return dz.reshape(rn, c, h, w)


class ExplicitTower:
    """A head tower + classifier whose input gradient is computed without autograd.

    ``tower`` is a Sequential of Conv2d / GroupNorm / ReLU (any nesting of Sequentials);
    ``classifier`` the final Conv2d. The modules are shared, not copied: the explicit pass uses the
    detector's current weights. ``freeze_kernels=True`` derives the backward kernels once, now (for
    export: torch.onnx cannot constant-fold the flip, so the graph then holds them as constants);
    they go stale if the weights change afterwards.
    """

    def __init__(self, tower: nn.Module, classifier: nn.Conv2d, freeze_kernels: bool = False):
        self.layers = _flatten_chain(tower)
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                _check_conv(layer)
            elif not isinstance(layer, (nn.GroupNorm, nn.ReLU)):
                raise ValueError(f"explicit gradients do not support {type(layer).__name__} in a tower")
        _check_conv(classifier)
        self.classifier = classifier
        self._kernels: dict[int, Tensor] = {}
        if freeze_kernels:
            with torch.no_grad():
                for conv in [m for m in self.layers if isinstance(m, nn.Conv2d)] + [classifier]:
                    self._kernels[id(conv)] = backward_kernel(conv).detach().contiguous()

    def forward(self, x: Tensor) -> tuple[Tensor, list]:
        """Tower + classifier on ``x`` -> (logits, cache for :meth:`input_grad`)."""
        cache: list = []
        h = x
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                cache.append(layer)
                h = layer(h)
            elif isinstance(layer, nn.GroupNorm):
                h, gn_cache = group_norm_forward(h, layer)
                cache.append(gn_cache)
            else:  # ReLU: keep the mask of active units (torch's relu backward uses output > 0)
                h = torch.relu(h)
                cache.append(h > 0)
        return self.classifier(h), cache

    def input_grad(self, grad_logits: Tensor, cache: list, reps: int = 1) -> Tensor:
        """Vector-Jacobian product: d/dx sum(grad_logits * logits(x)).

        ``grad_logits`` is [reps * N, K, H, W]: ``reps`` cotangents for the same N inputs stacked
        along the batch axis (LAcls needs two); the result is stacked the same way.
        """
        g = conv_input_grad(grad_logits, self.classifier, self._kernels.get(id(self.classifier)))
        for item in reversed(cache):
            if isinstance(item, nn.Conv2d):
                g = conv_input_grad(g, item, self._kernels.get(id(item)))
            elif isinstance(item, _GNCache):
                g = group_norm_input_grad(g, item, reps)
            else:
                mask = item if reps == 1 else item.repeat(reps, 1, 1, 1)
                g = g * mask.to(g.dtype)
        return g


def _onehot(index: Tensor, num: int, dim: int, like: Tensor) -> Tensor:
    """One-hot of an integer index tensor along ``dim`` (negative index -> all-zero row)."""
    shape = [1] * like.dim()
    shape[dim] = num
    ar = torch.arange(num, device=like.device).view(shape)
    return (index.unsqueeze(dim) == ar).to(like.dtype)


def cls_label_onehots(probs: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One-hot maps of the label and of the misleading class y* (docs/method.md §3 steps 2-3).

    probs: [N, C, H, W] sigmoid class probabilities. labels: [N, H, W] int64 class index per
    location, -1 for background; None = inference pseudo-labels (arg-max of ``probs``).
    y* is the highest-scoring class other than the label (for background: the highest class).
    """
    num_classes = probs.shape[1]
    if labels is None:
        labels = probs.argmax(dim=1)
    onehot = _onehot(labels, num_classes, 1, probs)
    # Exclude the label's own class; probabilities are >= 0, so -1 can never win the arg-max.
    misleading = (probs - 2.0 * onehot).argmax(dim=1)
    return onehot, _onehot(misleading, num_classes, 1, probs)


def la_cls_grads(
    x: Tensor, tower: ExplicitTower, labels: Tensor | None = None, label_grad: bool = True
) -> tuple[Tensor | None, Tensor]:
    """LAcls raw gradients g1 = d/dx sum(y*onehot(label)), g2 = d/dx sum(y*onehot(y*)) (docs/method.md §3).

    x: [N, C, H, W] head input of one FPN level. Returns (g1, g2), each shaped like x; the
    caller applies ``sigmoid`` and Eq. 7. No autograd graph is built or needed.
    ``label_grad=False`` skips g1 (returned as None): Eq. 7 with b = 0 multiplies it by 0, the released
    setting (1.5, 0, 1) of docs/method.md §7.5; the backward then runs on one cotangent instead of two.
    """
    logits, cache = tower.forward(x)
    y = torch.sigmoid(logits)
    onehot, onehot_star = cls_label_onehots(y, labels)
    dsig = y * (1.0 - y)  # d sigmoid / d logit
    if not label_grad:
        return None, tower.input_grad(onehot_star * dsig, cache)
    grad_logits = torch.cat([onehot * dsig, onehot_star * dsig], dim=0)
    g = tower.input_grad(grad_logits, cache, reps=2)
    n = x.shape[0]
    return g[:n], g[n:]


def la_reg_grad(
    x: Tensor,
    tower: ExplicitTower,
    num_bins: int = 17,
    bins: Tensor | None = None,
    logit_scale: Tensor | float | None = None,
    activation: str = "softmax",
) -> Tensor:
    """LAreg raw gradient d/dx sum(y * onehot(bin)) with y a softmax over bins per side (docs/method.md §4),
    or with ``activation="sigmoid"`` a sigmoid per bin (the released LAreg head, docs/method.md §7.6).

    The classifier outputs 4 * num_bins channels, side-major (channel = side * num_bins + bin,
    as in Generalized Focal Loss). bins: [N, 4, H, W] target bin per side, None = arg-max bin
    (inference). logit_scale: a multiplier applied to the classifier output before the softmax
    (a per-level Scale, if the detector puts it there), folded into the chain rule here.
    """
    logits, cache = tower.forward(x)
    n, k, h, w = logits.shape
    if k % num_bins:
        raise ValueError(f"regression output has {k} channels, not a multiple of {num_bins} bins")
    sides = k // num_bins
    z = logits.reshape(n, sides, num_bins, h, w)
    if logit_scale is not None:
        z = z * logit_scale
    if activation == "sigmoid":
        y = torch.sigmoid(z)
        if bins is None:
            bins = y.argmax(dim=2)
        grad_z = _onehot(bins, num_bins, 2, y) * y * (1.0 - y)  # d/dz_j sum_k y_k o_k = o_j y_j (1 - y_j)
    elif activation == "softmax":
        y = torch.softmax(z, dim=2)
        if bins is None:
            bins = y.argmax(dim=2)
        onehot = _onehot(bins, num_bins, 2, y)
        # d/dz_j sum_k y_k o_k = y_j (o_j - sum_k y_k o_k)
        grad_z = y * (onehot - (y * onehot).sum(dim=2, keepdim=True))
    else:
        raise ValueError(f"unknown LAreg activation {activation!r}")
    if logit_scale is not None:
        grad_z = grad_z * logit_scale
    return tower.input_grad(grad_z.reshape(n, k, h, w), cache)
