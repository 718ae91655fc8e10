"""`xscreen import-mmdet`: turn the authors' released mmdetection 2.x checkpoint into xscreen weights.

    xscreen import-mmdet epoch_12_311.pth --config atss_lacls_r50_release \\
        [--classes-json instances_test.json] --out clcxray-lacls.safetensors [--score-threshold T]

Steps (docs/model.md "Serving the authors' released checkpoint"; docs/method.md §7):
1. read the checkpoint with ``torch.load(weights_only=True)`` (model.mmdet_checkpoint: nothing in the
   file is ever run) and tell the head version from ``reg_conf``'s shapes (§7.2);
2. check that ``--config`` builds that head (la_mode, reg_conf statistics and width, LA coefficients,
   P7 form, backbone depth, FPN width, tower depth); if not, name the config that would;
3. permute the classifier rows (``atss_cls`` weight and bias) from the checkpoint's class order (the
   annotation json's ``categories`` if given, else meta CLASSES; §7.9) into xscreen's;
4. map the key names (model.mmdet_keys), check every tensor's shape against the built detector, load
   strictly;
5. write safetensors (model.weights.save_weights: config sealed, sha256) with the source file's name and
   sha256, the head version, the class order assumed and an operating threshold, atomically: on any
   error nothing is written, and an existing ``--out`` is replaced only with ``--force``.

The imported model comes with no validation split, so its operating threshold is not picked on data:
it is ``LEGACY_SCORE_THRESHOLD`` (or ``--score-threshold``) until ``xscreen threshold --data`` re-picks
it on the site's own validation scans.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from xscreen.argtypes import unit_float
from xscreen.errors import XscreenError
from xscreen.model.config import LEGACY_SCORE_THRESHOLD  # an import's threshold until re-picked on data

DEFAULT_RULE = "import-default"

# What each released head needs from a config (docs/method.md §7.2, §7.5, §7.6): the fields that
# decide its tensors' shapes and the released test-time forward. Shared by all three versions:
COMMON_FIELDS = {"head_style": "released", "fpn_p7_relu": False, "backbone_norm": "frozen_bn", "reg_max": 16}
HEAD_FIELDS: dict[str, dict[str, object]] = {
    "lacls": {
        "la_mode": "cls",
        "reg_conf_stats": "max_mean",
        "reg_conf_channels": 16,
        "la_coeffs": (1.5, 0.0, 1.0),
    },
    "lacls_7f32fc6a": {
        "la_mode": "cls",
        "reg_conf_stats": "topk_mean",
        "reg_conf_channels": 64,
        "la_coeffs": (1.5, 0.0, 1.0),
    },
    "lareg": {
        "la_mode": "reg",
        "reg_conf_stats": "max_mean",
        "reg_conf_channels": 64,
        "la_coeffs": (0.5, 1.0, 0.0),
    },
}
HEAD_NAMES = {
    "lacls": "LAcls head, final version (de239996; reg_conf 4 -> 16 -> 1)",
    "lacls_7f32fc6a": "LAcls head, earliest version (7f32fc6a; reg_conf 20 -> 64 -> 1)",
    "lareg": "LAreg head (reg_conf 4 -> 64 -> 1)",
}
# Training-only fields worth setting in a config written for the earliest LAcls (method.md §7.3).
_EXTRA_ADVICE = {"lacls_7f32fc6a": {"quality_target": "iou"}}


class ImportCheckError(XscreenError):
    """A checkpoint that does not fit the chosen config, or an output that cannot be written."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("checkpoint", type=Path, help="mmdetection 2.x checkpoint (.pth), e.g. the authors' epoch_12_311.pth")
    a("--config", required=True, help="xscreen config (name or JSON path), e.g. atss_lacls_r50_release")
    a("--classes-json", type=Path, help="the annotation json whose categories order numbers the rows")
    a("--out", required=True, type=Path, help="safetensors weights to write")
    a(
        "--score-threshold",
        type=unit_float,
        metavar="T",
        help=f"operating threshold to record (default {LEGACY_SCORE_THRESHOLD}, not picked on data)",
    )
    a("--name", help="model name in the weights and the service's answers (default: the checkpoint's stem)")
    a("--force", action="store_true", help="replace --out if it exists")


# ----------------------------------------------------------------------------- checks


def checkpoint_geometry(state_dict) -> dict[str, int]:
    """depth, fpn_channels, stacked_convs read off an mmdetection ATSS state dict (missing ones left out)."""
    out: dict[str, int] = {}
    lateral = state_dict.get("neck.lateral_convs.0.conv.weight")
    if lateral is not None:
        out["fpn_channels"] = int(lateral.shape[0])
    towers = {k.split(".")[2] for k in state_dict if k.startswith("bbox_head.cls_convs.")}
    if towers:
        out["stacked_convs"] = len(towers)

    def blocks(layer: str) -> int:
        return len({k.split(".")[2] for k in state_dict if k.startswith(f"backbone.{layer}.")})

    if "backbone.layer1.0.conv3.weight" in state_dict:  # bottleneck blocks: ResNet-50/101
        out["depth"] = {6: 50, 23: 101}.get(blocks("layer3"), 0)
    elif "backbone.layer1.0.conv2.weight" in state_dict:  # basic blocks: ResNet-18/34
        out["depth"] = {2: 18, 6: 34}.get(blocks("layer3"), 0)
    return {k: v for k, v in out.items() if v}


def _wanted(head: str, geometry: dict[str, int]) -> dict[str, object]:
    from xscreen.model.classes import CLASS_NAMES

    return {**COMMON_FIELDS, **HEAD_FIELDS[head], **geometry, "class_names": CLASS_NAMES}


def _differences(cfg, wanted: dict[str, object]) -> dict[str, tuple[object, object]]:
    diff = {}
    for field, value in wanted.items():
        have = getattr(cfg, field)
        if isinstance(value, tuple):
            have = tuple(have)
        if have != value:
            diff[field] = (have, value)
    return diff


def _fmt(value: object) -> str:
    if isinstance(value, tuple) and len(value) > 4:
        return f"{len(value)} names"
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def suggest_config(head: str, geometry: dict[str, int]) -> str:
    """A bundled config that builds this head at this size, or how to write one."""
    from xscreen.model.config import available_configs, load_config

    wanted = _wanted(head, geometry)
    fits, near = [], []
    for name in available_configs():
        cfg = load_config(name)
        diff = _differences(cfg, wanted)
        if not diff:
            fits.append(name)
        elif cfg.released and cfg.la_mode == wanted["la_mode"] and geometry.get("depth") == cfg.depth:
            near.append((len(diff), name, diff))
    if fits:
        return f"use --config {fits[0]}"
    if near:
        _, name, diff = min(near)
        extra = {**{k: v for k, (_, v) in diff.items()}, **_EXTRA_ADVICE.get(head, {})}
        fields = ", ".join(f'"{k}": {_fmt(v)}' for k, v in extra.items())
        return f"no bundled config builds it: use a JSON copy of {name} with {fields} (docs/model.md)"
    want = ", ".join(f"{k} {_fmt(v)}" for k, v in wanted.items() if k != "class_names")
    return f"no bundled config builds it: use a JSON config with {want}"


def check_config_fits(head: str, state_dict, cfg) -> None:
    """ImportCheckError naming the config that would fit, when ``cfg`` does not build this head."""
    geometry = checkpoint_geometry(state_dict)
    diff = _differences(cfg, _wanted(head, geometry))
    if diff:
        parts = "; ".join(f"{k} {_fmt(have)} (needs {_fmt(want)})" for k, (have, want) in diff.items())
        raise ImportCheckError(
            f"--config {cfg.name} does not fit this checkpoint: it holds the {HEAD_NAMES[head]}"
            f"{_geometry_words(geometry)}; the config has {parts}. {suggest_config(head, geometry)}"
        )


def _geometry_words(geometry: dict[str, int]) -> str:
    if not geometry:
        return ""
    words = [f"ResNet-{geometry['depth']}" if "depth" in geometry else ""]
    if "fpn_channels" in geometry:
        words.append(f"{geometry['fpn_channels']}-channel FPN")
    if "stacked_convs" in geometry:
        words.append(f"{geometry['stacked_convs']} convs per tower")
    return " on a " + ", ".join(w for w in words if w)


def permute_classifier(state_dict, perm: list[int]) -> dict:
    """A copy of the mmdetection state dict whose ``atss_cls`` rows are in xscreen's class order:
    xscreen class k takes checkpoint row ``perm[k]`` (docs/method.md §7.9)."""
    import torch

    out = dict(state_dict)
    index = torch.tensor(perm, dtype=torch.long)
    for key in ("bbox_head.atss_cls.weight", "bbox_head.atss_cls.bias"):
        if key in out:
            out[key] = out[key].index_select(0, index).contiguous()
    return out


def check_shapes(mapped, own, config_name: str) -> None:
    """ImportCheckError listing missing, unexpected and mis-shaped keys (the first few of each)."""
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    shaped = [
        f"{k} {list(mapped[k].shape)} vs {list(own[k].shape)}"
        for k in sorted(set(own) & set(mapped))
        if tuple(mapped[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected {unexpected[:3]}")
        if shaped:
            parts.append(f"{len(shaped)} with another shape (checkpoint vs config) {shaped[:3]}")
        what = "; ".join(parts)
        raise ImportCheckError(f"the checkpoint's tensors do not fit --config {config_name}: {what}")


def build_imported(ckpt, cfg, perm: list[int]):
    """The detector of ``cfg`` (eval mode) holding the checkpoint's tensors, classifier rows permuted."""
    import torch

    from xscreen.model import build_detector
    from xscreen.model.errors import WeightsError
    from xscreen.model.mmdet_keys import mmdet_to_xscreen_state_dict

    check_config_fits(ckpt.head, ckpt.state_dict, cfg)
    try:
        mapped = mmdet_to_xscreen_state_dict(permute_classifier(ckpt.state_dict, perm))
    except WeightsError as exc:
        raise ImportCheckError(f"{ckpt.path}: {exc}") from None
    model = build_detector(cfg, channels_last=False)
    own = model.state_dict()
    check_shapes(mapped, own, cfg.name)
    bad = [k for k, v in mapped.items() if not v.is_floating_point() and own[k].is_floating_point()]
    if bad:
        raise ImportCheckError(f"{ckpt.path}: non-float tensors where weights belong: {bad[:3]}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- output


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ImportCheckError(f"--out {out} is a directory; give a file name such as model.safetensors")
    if not out.parent.is_dir():
        raise ImportCheckError(f"--out: output directory {out.parent} does not exist")
    if out.exists() and not force:
        raise ImportCheckError(f"--out {out} exists; give --force to replace it")


def _write_atomically(model, out: Path, metadata: dict, operating_point: dict) -> str:
    """save_weights to a hidden file next to ``out``, then rename it over ``out``; nothing left on error."""
    from xscreen.model.weights import save_weights

    tmp = out.with_name(f".{out.name}.{os.getpid()}.importing")
    try:
        digest = save_weights(model, tmp, metadata=metadata, operating_point=operating_point)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".tmp")):  # save_weights' own temp name
            leftover.unlink(missing_ok=True)
    return digest


def run(args: argparse.Namespace) -> int:
    from xscreen import __version__
    from xscreen.model.classes import CLASS_NAMES
    from xscreen.model.config import load_config
    from xscreen.model.mmdet_checkpoint import checkpoint_class_order, read_checkpoint

    out: Path = args.out
    check_output(out, args.force)
    cfg = load_config(args.config)
    ckpt = read_checkpoint(args.checkpoint)
    perm, why = checkpoint_class_order(ckpt, args.classes_json)
    if args.classes_json is not None:
        from xscreen.model.mmdet_checkpoint import classes_from_json

        source_names = classes_from_json(args.classes_json)
    else:
        source_names = ckpt.meta_classes or ()
    model = build_imported(ckpt, cfg, perm)

    threshold = LEGACY_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    note = (
        "imported model: no validation split here, so this threshold was not picked on data; "
        "re-pick it on the site's validation scans with `xscreen threshold W --data DATA --out W`"
    )
    operating_point = {
        "score_threshold": threshold,
        "rule": DEFAULT_RULE if args.score_threshold is None else "manual",
        "note": note,
    }
    name = args.name or ckpt.path.stem
    metadata = {
        "name": name,
        "version": f"mmdet-import (xscreen {__version__})",
        "source": {
            "format": "mmdetection 2.x checkpoint",
            "file": ckpt.path.name,
            "file_sha256": file_sha256(ckpt.path),
            "mmdet_version": ckpt.mmdet_version,
        },
        "head_version": ckpt.head,
        "head": HEAD_NAMES[ckpt.head],
        "class_order": {
            "assumed": why,
            "checkpoint_rows": list(source_names),
            "row_of_each_class": dict(zip(CLASS_NAMES, perm, strict=True)),
        },
        "validation": "none: imported without a validation split (docs/model.md)",
    }
    digest = _write_atomically(model, out, metadata, operating_point)

    rows = ", ".join(f"{n} <- {perm[k]} {source_names[perm[k]]!r}" for k, n in enumerate(CLASS_NAMES))
    version = ckpt.mmdet_version or "version not recorded"
    print(f"read {ckpt.path} (mmdetection {version}): {HEAD_NAMES[ckpt.head]}")
    print(f"class order assumed: {why}")
    print(f"classifier rows (xscreen class <- checkpoint row): {rows}")
    print(f"wrote {out}: config {cfg.name}, name {name}, sha256 {digest}")
    print(
        f"operating threshold {threshold:g} ({operating_point['rule']}): not picked on validation data; "
        f"re-pick it with `xscreen threshold {out} --data DATA --split val --out {out}`"
    )
    print("next steps (docs/model.md, 'Serving the authors' released checkpoint'):")
    print(f"  check the class order: xscreen eval --weights {out} --data DATA --split test  (per-class AP)")
    print(f"  serve:  xscreen serve --weights {out} --weights-sha256 {digest}")
    print(f"  export: xscreen export --weights {out} --out model.onnx  (verifies ONNX Runtime vs torch)")
    return 0
