"""The explicit (autograd-free) LA gradients of model/explicit_grad.py equal torch.autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xscreen.model.explicit_grad import (
    ExplicitTower,
    cls_label_onehots,
    group_norm_forward,
    la_cls_grads,
    la_reg_grad,
)


def _tower(channels: int, out: int, depth: int = 4, dtype=torch.float32, seed: int = 0):
    """A head-like tower: [Conv3x3, GroupNorm(32), ReLU] x depth + a 3x3 classifier, random weights."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
    tower = nn.Sequential(*layers)
    classifier = nn.Conv2d(channels, out, 3, padding=1)
    with torch.no_grad():
        for m in tower:
            if isinstance(m, nn.GroupNorm):  # non-trivial affine parameters
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return tower.to(dtype), classifier.to(dtype)


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-10


def _assert_close_rel(actual, expected, rel):
    """max |a - e| <= 2 * rel * max|e|: a tight tolerance relative to the gradient's scale."""
    scale = expected.abs().max().item()
    assert scale > 0, "reference gradient is identically zero: the test would prove nothing"
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale * 2, f"max abs error {err:.3e} vs scale {scale:.3e}"


def test_group_norm_forward_matches_torch():
    torch.manual_seed(1)
    gn = nn.GroupNorm(32, 64)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-1, 1)
    z = torch.randn(2, 64, 7, 5) * 3 + 1
    out, _ = group_norm_forward(z, gn)
    torch.testing.assert_close(out, gn(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tower_forward_and_vjp_match_autograd(dtype):
    tower, classifier = _tower(64, 12, dtype=dtype)
    explicit = ExplicitTower(tower, classifier)
    torch.manual_seed(2)
    x = torch.randn(2, 64, 11, 9, dtype=dtype)
    cot = torch.randn(2, 12, 11, 9, dtype=dtype)
    x0 = x.clone().requires_grad_(True)
    ref_logits = classifier(tower(x0))
    (ref,) = torch.autograd.grad((ref_logits * cot).sum(), x0)
    with torch.no_grad():
        logits, cache = explicit.forward(x)
        got = explicit.input_grad(cot, cache)
    _assert_close_rel(logits, ref_logits.detach(), _tol(dtype))
    _assert_close_rel(got, ref, _tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training_labels", [False, True])
def test_la_cls_grads_match_autograd(dtype, training_labels):
    tower, classifier = _tower(64, 12, dtype=dtype, seed=3)
    torch.manual_seed(4)
    x = torch.randn(2, 64, 10, 13, dtype=dtype)
    labels = None
    if training_labels:  # ATSS-assigned classes with background (-1) locations
        labels = torch.randint(-1, 12, (2, 10, 13))
        assert (labels == -1).any() and (labels >= 0).any()

    x0 = x.clone().requires_grad_(True)
    y = torch.sigmoid(classifier(tower(x0)))
    # Reference labels exactly as docs/method.md §3 states them, computed independently.
    lab = y.detach().argmax(1) if labels is None else labels
    onehot = torch.zeros_like(y)
    fg = lab >= 0
    onehot.permute(0, 2, 3, 1)[fg] = nn.functional.one_hot(lab[fg], 12).to(dtype)
    masked = y.detach().clone()
    masked.permute(0, 2, 3, 1)[fg] = masked.permute(0, 2, 3, 1)[fg].scatter(1, lab[fg][:, None], -1.0)
    ystar = nn.functional.one_hot(masked.argmax(1), 12).permute(0, 3, 1, 2).to(dtype)
    g1_ref = torch.autograd.grad((y * onehot).sum(), x0, retain_graph=True)[0]
    g2_ref = torch.autograd.grad((y * ystar).sum(), x0)[0]

    with torch.inference_mode():
        g1, g2 = la_cls_grads(x, ExplicitTower(tower, classifier), labels)
    _assert_close_rel(g1, g1_ref, _tol(dtype))
    _assert_close_rel(g2, g2_ref, _tol(dtype))
    # the LA weights the head actually uses (sigmoid of the gradients) agree as well
    torch.testing.assert_close(torch.sigmoid(g1), torch.sigmoid(g1_ref), rtol=0, atol=_tol(dtype))


def test_pseudo_labels_and_misleading_class():
    probs = torch.tensor([0.1, 0.7, 0.3, 0.05]).view(1, 4, 1, 1)
    onehot, star = cls_label_onehots(probs)
    assert onehot.flatten().tolist() == [0, 1, 0, 0]
    assert star.flatten().tolist() == [0, 0, 1, 0]
    onehot, star = cls_label_onehots(probs, torch.tensor([[[-1]]]))  # background: y* = top class
    assert onehot.flatten().tolist() == [0, 0, 0, 0]
    assert star.flatten().tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [None, 1.7])
def test_la_reg_grad_matches_autograd(dtype, scale):
    tower, classifier = _tower(64, 4 * 17, dtype=dtype, seed=5)
    torch.manual_seed(6)
    x = torch.randn(2, 64, 8, 6, dtype=dtype)
    x0 = x.clone().requires_grad_(True)
    z = classifier(tower(x0)).reshape(2, 4, 17, 8, 6)
    if scale is not None:
        z = z * scale
    y = torch.softmax(z, dim=2)
    onehot = nn.functional.one_hot(y.detach().argmax(2), 17).permute(0, 1, 4, 2, 3).to(dtype)
    (ref,) = torch.autograd.grad((y * onehot).sum(), x0)
    with torch.no_grad():
        got = la_reg_grad(x, ExplicitTower(tower, classifier), 17, logit_scale=scale)
    _assert_close_rel(got, ref, _tol(dtype))


def test_unsupported_towers_are_refused():
    with pytest.raises(ValueError, match="stride-1"):
        ExplicitTower(nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1)), nn.Conv2d(8, 2, 3, padding=1))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        ExplicitTower(nn.Sequential(nn.BatchNorm2d(8)), nn.Conv2d(8, 2, 3, padding=1))
    with pytest.raises(ValueError, match="size-preserving"):
        ExplicitTower(nn.Sequential(nn.ReLU()), nn.Conv2d(8, 2, 3, padding=0))
