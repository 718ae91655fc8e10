"""State-dict key mapping from mmdetection 2.x ATSS / released LA checkpoints to xscreen's modules.

mmdetection names (the authors' ``ATSSLAclsHead`` / ``ATSSLAregHead`` and plain ``ATSSHead``,
method.md §7) -> xscreen names (model/backbone.py, model/head.py):

- ``backbone.<resnet key>`` -> ``backbone.body.<resnet key>`` (same torchvision ResNet naming;
  ``num_batches_tracked`` is dropped: xscreen's frozen BatchNorm keeps no counter);
- ``neck.lateral_convs.i.conv.*`` -> ``backbone.fpn.inner_blocks.i.0.*`` (i = 0..2);
- ``neck.fpn_convs.i.conv.*`` -> ``backbone.fpn.layer_blocks.i.0.*`` (i = 0..2), ``i = 3`` ->
  ``backbone.fpn.extra_blocks.p6.*``, ``i = 4`` -> ``backbone.fpn.extra_blocks.p7.*``;
- ``bbox_head.{cls,reg}_convs.i.conv.weight`` -> ``head.{cls,reg}_convs.<3i>.weight`` and
  ``bbox_head.{cls,reg}_convs.i.gn.{weight,bias}`` -> ``head.{cls,reg}_convs.<3i+1>.*``;
- ``bbox_head.atss_cls.*``, ``atss_reg.*``, ``atss_centerness.*`` (plain ATSS), ``reg_conf.{0,2}.*``
  (released heads), ``scales.i.scale`` -> the same names under ``head.``;
- ``bbox_head.integral.project`` (the fixed bin values 0..reg_max of the released heads) is dropped.

Shapes are not changed; the importer checks them against the model it builds.
"""

from __future__ import annotations

import re

from torch import Tensor

from xscreen.model.errors import WeightsError

_CONV_MODULE = re.compile(r"^bbox_head\.(cls_convs|reg_convs)\.(\d+)\.(conv|gn)\.(weight|bias)$")
_NECK = re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$")
_HEAD_SAME = ("atss_cls.", "atss_reg.", "atss_centerness.", "reg_conf.", "scales.")
_DROPPED = ("bbox_head.integral.project",)


def mmdet_key_to_xscreen(key: str) -> str | None:
    """The xscreen state-dict key of one mmdetection key; None for keys xscreen does not keep.

    Raises WeightsError for a key outside the ATSS layout (backbone / neck / bbox_head).
    """
    if key in _DROPPED or key.endswith("num_batches_tracked"):
        return None
    if key.startswith("backbone."):
        return "backbone.body." + key.removeprefix("backbone.")
    m = _NECK.match(key)
    if m:
        kind, i, param = m.group(1), int(m.group(2)), m.group(3)
        if kind == "lateral_convs" and i < 3:
            return f"backbone.fpn.inner_blocks.{i}.0.{param}"
        if kind == "fpn_convs" and i < 3:
            return f"backbone.fpn.layer_blocks.{i}.0.{param}"
        if kind == "fpn_convs" and i in (3, 4):
            return f"backbone.fpn.extra_blocks.p{i + 3}.{param}"
    m = _CONV_MODULE.match(key)
    if m:
        tower, i, part, param = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        return f"head.{tower}.{3 * i + (0 if part == 'conv' else 1)}.{param}"
    rest = key.removeprefix("bbox_head.")
    if rest != key and rest.startswith(_HEAD_SAME):
        return "head." + rest
    raise WeightsError(f"checkpoint key {key!r} is not part of an mmdetection ATSS detector")


def mmdet_to_xscreen_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An mmdetection 2.x ATSS / LA state dict (``ckpt['state_dict']``) -> xscreen key names.

    Tensors are passed through unchanged (no copy, no class permutation: the importer permutes the
    ``atss_cls`` rows separately, docs/method.md §7.9). WeightsError for an unknown key or two keys that map
    to the same xscreen name.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = mmdet_key_to_xscreen(key.removeprefix("module."))
        if new is None:
            continue
        if new in out:
            raise WeightsError(f"checkpoint keys map twice onto {new!r}")
        out[new] = value
    return out
