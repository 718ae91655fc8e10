"""ResNet (torchvision) + FPN P3-P7 backbone; stage-1 and BatchNorm frozen; local ImageNet weights."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from xscreen.errors import XscreenError
from xscreen.model.errors import WeightsError

_RESNETS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}


class BackboneWeightsError(XscreenError):
    """ImageNet backbone weights that cannot be read or do not fit the ResNet."""


class FrozenBatchNorm2dFused(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same state dict, same maths) computed by the fused inference
    kernel of F.batch_norm instead of torchvision's separate rsqrt / multiply / add passes."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class FrozenStatsBatchNorm2d(nn.Module):
    """BatchNorm with fixed running statistics but trainable affine weight and bias: mmdetection's
    ``norm_eval=True`` with ``requires_grad=True`` (the authors' backbone, docs/method.md §7.8).

    Same state-dict keys as FrozenBatchNorm2d (weight, bias, running_mean, running_var), so a weights
    file loads into either; here weight and bias are Parameters instead of buffers.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # as FrozenBatchNorm2d: not kept
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """P6 = conv(P5 output), P7 = conv(P6) without an activation in between: mmdetection's FPN with
    ``add_extra_convs='on_output'`` and ``relu_before_extra_convs=False`` (docs/method.md §7.7).
    Same parameters (p6, p7) as torchvision's LastLevelP6P7, which computes P7 = conv(relu(P6))."""

    def forward(self, p, c, names):
        p5, c5 = p[-1], c[-1]
        x = p5 if self.use_P5 else c5
        p6 = self.p6(x)
        p7 = self.p7(p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


class ResNetFPN(nn.Module):
    """ResNet C3-C5 -> FPN P3-P5 (+P6, P7 from P5's output), ``out_channels`` each (docs/method.md §2).

    ``norm="frozen_bn"`` (docs/method.md §2, ImageNet-initialised training): BatchNorm with fixed running
    statistics in every mode; its affine parameters are fixed too (torchvision FrozenBatchNorm2d) unless
    ``bn_affine_trainable`` (the authors' norm_eval=True + requires_grad=True, docs/method.md §7.8).
    ``norm="group_norm"``: trainable GroupNorm(32), for training from scratch.
    ``frozen_stages=1`` freezes the stem and layer1 (mmdet numbering); -1 freezes nothing beyond BatchNorm.
    ``p7_relu``: P7 = conv(relu(P6)) (torchvision) or conv(P6) (mmdetection, docs/method.md §7.7).
    """

    def __init__(
        self,
        depth: int = 50,
        out_channels: int = 256,
        frozen_stages: int = 1,
        norm: str = "frozen_bn",
        *,
        bn_affine_trainable: bool = False,
        p7_relu: bool = True,
    ):
        super().__init__()
        if norm == "frozen_bn":
            norm_layer = FrozenStatsBatchNorm2d if bn_affine_trainable else FrozenBatchNorm2dFused
        elif norm == "group_norm":
            # Training from random initialisation (no ImageNet weights, as on the synthetic scans):
            # frozen BN is then an identity and the deep trunk trains poorly; trainable GroupNorm(32)
            # is the usual from-scratch choice (He et al., "Rethinking ImageNet Pre-training", 2019).
            # Batch-independent like the head's GroupNorm (docs/method.md §3).
            def norm_layer(channels: int) -> nn.Module:
                return nn.GroupNorm(32, channels)
        else:
            raise ValueError(f"unknown backbone norm {norm!r}")
        self.norm = norm
        resnet = _RESNETS[depth](weights=None, norm_layer=norm_layer)
        self.body = IntermediateLayerGetter(
            resnet, return_layers={"layer2": "c3", "layer3": "c4", "layer4": "c5"}
        )
        c5 = resnet.fc.in_features
        in_channels = [c5 // 4, c5 // 2, c5]
        # P6 = conv(P5 output) (mmdet add_extra_convs='on_output'); P7 = conv(relu(P6)) is torchvision's
        # LastLevelP6P7, P7 = conv(P6) mmdetection's relu_before_extra_convs=False (docs/method.md §7.7)
        extra = LastLevelP6P7 if p7_relu else LastLevelP6P7NoReLU
        self.fpn = FeaturePyramidNetwork(
            in_channels, out_channels, extra_blocks=extra(out_channels, out_channels)
        )
        self.out_channels = out_channels
        self.frozen_stages = frozen_stages
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, self.frozen_stages + 1)]
        for name, p in self.body.named_parameters():
            if name.split(".")[0] in frozen:
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        out = self.fpn(OrderedDict(feats))
        return list(out.values())  # [P3, P4, P5, P6, P7]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only=True: tensors and plain containers only, never arbitrary pickled objects
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a broken file
        raise BackboneWeightsError(
            f"{path}: cannot read backbone weights ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise BackboneWeightsError(f"{path}: expected a ResNet state dict (name -> tensor)")
    return sd


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision ResNet ImageNet state dict (.pth or .safetensors) into ``model``'s ResNet.

    ``model`` is an ATSSDetector or a ResNetFPN. The classifier (``fc.*``) is ignored; any other
    missing, unexpected or mis-shaped tensor raises WeightsError. Returns the names loaded.
    """
    backbone = model.backbone if hasattr(model, "backbone") else model
    body: nn.Module = backbone.body
    path = Path(path)
    if getattr(backbone, "norm", "frozen_bn") != "frozen_bn":
        raise WeightsError(
            f"{path}: ImageNet ResNet weights come with BatchNorm statistics, but this config's "
            f"backbone_norm is {backbone.norm!r} (training from scratch); use backbone_norm 'frozen_bn'"
        )
    try:
        sd = _read_state_dict(path)
    except BackboneWeightsError as exc:
        raise WeightsError(str(exc)) from None
    sd = {
        k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")
    }
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    own = body.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: not a ResNet-{_depth_of(backbone)} state dict: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise WeightsError(f"{path}: shape mismatch for ResNet-{_depth_of(backbone)}: {bad[:3]}")
    body.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return sorted(sd)


def _depth_of(backbone: nn.Module) -> str:
    n_blocks = sum(len(getattr(backbone.body, f"layer{i}")) for i in range(1, 5))
    bottleneck = hasattr(backbone.body.layer1[0], "conv3")
    return str(
        {(8, False): 18, (16, False): 34, (16, True): 50, (33, True): 101}.get((n_blocks, bottleneck), "?")
    )
