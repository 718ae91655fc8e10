"""Reading an mmdetection 2.x checkpoint of the authors' released heads safely (docs/method.md §7).

An mmdetection 2.x checkpoint is ``torch.save({'meta': {...}, 'state_dict': {...}, 'optimizer': {...}})``.
It is read with ``torch.load(weights_only=True)``: tensors, containers and plain values only, so a
file that carries code (a pickle ``REDUCE`` of anything else) is refused and never executed.

What is checked here, before any tensor is mapped onto an xscreen module:
- the file is a checkpoint at all (not truncated, a dict with a ``state_dict`` of tensors);
- the head is one of the authors' released heads, told apart by the ``reg_conf`` quality branch's
  shapes (docs/method.md §7.2): LAcls final 4 -> 16 -> 1, LAcls as of 7f32fc6a 20 -> 64 -> 1, LAreg
  4 -> 64 -> 1; plain ATSS (a centerness conv), RetinaNet, GFL and others are named and refused;
- the classifier has one row per CLCXray class (12), and the class order is known: from the
  dataset json's ``categories`` (what mmdetection 2.x actually numbers labels by, §7.9) when one is
  given, else from the checkpoint's ``meta['CLASSES']``, and the order used is reported.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from xscreen.errors import XscreenError
from xscreen.model.classes import CLASS_NAMES, normalise_name

# (out, in) channels of reg_conf's first 1x1 conv -> the head version it identifies (docs/method.md §7.2).
REG_CONF_VERSIONS: dict[tuple[int, int], str] = {
    (16, 4): "lacls",  # final LAcls, de239996: max - mean per side, 4 -> 16 -> 1
    (64, 20): "lacls_7f32fc6a",  # earliest LAcls: top-4 + mean per side, 20 -> 64 -> 1
    (64, 4): "lareg",  # LAreg: max - mean per side, 4 -> 64 -> 1
}
REG_BINS = 17  # reg_max + 1 bins per side in both released heads (docs/method.md §7.1)

# Head keys of other mmdetection detectors, to name what a refused checkpoint holds.
_OTHER_HEADS = (
    ("bbox_head.atss_centerness.weight", "a plain ATSS head (centerness conv, no reg_conf)"),
    ("bbox_head.retina_cls.weight", "a RetinaNet head"),
    ("bbox_head.gfl_cls.weight", "a GFL head"),
    ("bbox_head.conv_centerness.weight", "an FCOS head"),
    ("rpn_head.rpn_cls.weight", "a two-stage detector (RPN + RoI head)"),
)


class MmdetImportError(XscreenError):
    """An mmdetection checkpoint (or classes json) that cannot be imported as a released head."""


@dataclass(frozen=True)
class MmdetCheckpoint:
    """The tensors of a released-head checkpoint and what was learnt about them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    head: str  # a value of REG_CONF_VERSIONS
    num_classes: int
    meta_classes: tuple[str, ...] | None  # meta['CLASSES'], if the checkpoint has them
    mmdet_version: str | None


def _load(path: Path) -> object:
    if not path.is_file():
        raise MmdetImportError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses every global it does not allow (code, other libraries' objects) and
        # every opcode it does not know (a damaged or foreign file); say which of the two it was
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        code = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), None)
        if code is not None:
            raise MmdetImportError(
                f"{path}: refused: the file references code or objects beyond tensors ({code[:200]}); "
                "nothing in it was run"
            ) from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else "")
        raise MmdetImportError(f"{path}: truncated or not a PyTorch checkpoint ({detail[:200]})") from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MmdetImportError(f"{path}: truncated or not a PyTorch checkpoint ({reason[:200]})") from None


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        keys = sorted(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise MmdetImportError(
            f"{path}: not an mmdetection checkpoint (expected a dict with 'state_dict', got {keys})"
        )
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise MmdetImportError(f"{path}: 'state_dict' is empty or not a name -> tensor mapping")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise MmdetImportError(f"{path}: 'state_dict' holds non-tensor entries, e.g. {bad[0]!r}")
    # DataParallel / DDP wrappers prefix every key with 'module.'
    return {k.removeprefix("module."): v for k, v in sd.items()}


def identify_head(state_dict: Mapping[str, torch.Tensor], path: Path | str = "checkpoint") -> str:
    """The released head version from reg_conf's shapes; a clear error for anything else."""
    conf0 = state_dict.get("bbox_head.reg_conf.0.weight")
    if conf0 is None:
        for key, what in _OTHER_HEADS:
            if key in state_dict:
                raise MmdetImportError(
                    f"{path}: holds {what}, not one of the authors' released LAcls/LAreg heads "
                    "(no bbox_head.reg_conf)"
                )
        heads = sorted({".".join(k.split(".")[:2]) for k in state_dict if k.startswith("bbox_head.")})
        raise MmdetImportError(
            f"{path}: no bbox_head.reg_conf: not a released LAcls/LAreg head (head modules: {heads[:6]})"
        )
    conf2 = state_dict.get("bbox_head.reg_conf.2.weight")
    shape = (int(conf0.shape[0]), int(conf0.shape[1])) if conf0.ndim == 4 else None
    version = REG_CONF_VERSIONS.get(shape) if shape else None
    if version is None or conf2 is None or tuple(conf2.shape) != (1, shape[0], 1, 1):
        known = ", ".join(f"{i} -> {o} -> 1 ({v})" for (o, i), v in REG_CONF_VERSIONS.items())
        got = tuple(conf0.shape), None if conf2 is None else tuple(conf2.shape)
        raise MmdetImportError(
            f"{path}: bbox_head.reg_conf has shapes {got}, which fit no released version ({known})"
        )
    reg = state_dict.get("bbox_head.atss_reg.weight")
    if reg is None or reg.shape[0] != 4 * REG_BINS:
        got = None if reg is None else tuple(reg.shape)
        raise MmdetImportError(
            f"{path}: bbox_head.atss_reg.weight is {got}; the released heads regress 4 x {REG_BINS} bins"
        )
    return version


def read_checkpoint(path: str | Path) -> MmdetCheckpoint:
    """Load and check an mmdetection 2.x checkpoint of a released head (no code is ever unpickled)."""
    path = Path(path)
    obj = _load(path)
    sd = _state_dict(obj, path)
    head = identify_head(sd, path)
    cls = sd.get("bbox_head.atss_cls.weight")
    if cls is None:
        raise MmdetImportError(f"{path}: no bbox_head.atss_cls.weight (the classifier)")
    num_classes = int(cls.shape[0])
    if num_classes != len(CLASS_NAMES):
        raise MmdetImportError(
            f"{path}: the classifier has {num_classes} classes; the CLCXray model has {len(CLASS_NAMES)}"
        )
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    classes = meta.get("CLASSES")
    meta_classes = tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) and classes else None
    version = meta.get("mmdet_version")
    return MmdetCheckpoint(path, sd, head, num_classes, meta_classes, str(version) if version else None)


def classes_from_json(path: str | Path) -> tuple[str, ...]:
    """Category names of a COCO annotation json, in the order of its ``categories`` list (§7.9)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MmdetImportError(f"--classes-json: {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MmdetImportError(f"--classes-json: {path}: not a readable JSON file ({exc})") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "name" in c for c in cats):
        raise MmdetImportError(f"--classes-json: {path}: no 'categories' list with names")
    return tuple(str(c["name"]) for c in cats)


def class_permutation(source_names: Sequence[str], what: str) -> list[int]:
    """For each xscreen class (model/classes.py order), its row in the checkpoint's classifier."""
    index = {normalise_name(n): i for i, n in enumerate(source_names)}
    if len(index) != len(source_names):
        raise MmdetImportError(f"{what}: repeated class names {list(source_names)}")
    missing = [n for n in CLASS_NAMES if normalise_name(n) not in index]
    if missing:
        raise MmdetImportError(f"{what}: lacks the CLCXray class(es) {missing} (has {list(source_names)})")
    if len(source_names) != len(CLASS_NAMES):
        extra = [n for n in source_names if normalise_name(n) not in {normalise_name(c) for c in CLASS_NAMES}]
        raise MmdetImportError(f"{what}: has classes outside CLCXray: {extra}")
    return [index[normalise_name(n)] for n in CLASS_NAMES]


def checkpoint_class_order(ckpt: MmdetCheckpoint, classes_json: str | Path | None) -> tuple[list[int], str]:
    """(permutation, a line saying which order was assumed) for the classifier rows."""
    if classes_json is not None:
        names = classes_from_json(classes_json)
        return class_permutation(names, f"--classes-json {classes_json}"), (
            f"the categories order of {classes_json} (how mmdetection 2.x numbers labels)"
        )
    if ckpt.meta_classes is None:
        raise MmdetImportError(
            f"{ckpt.path}: the checkpoint has no meta CLASSES; give the dataset's annotation json "
            "with --classes-json so the classifier rows can be matched to class names"
        )
    return class_permutation(ckpt.meta_classes, f"{ckpt.path} meta CLASSES"), (
        "the checkpoint's meta CLASSES; mmdetection 2.x numbers labels by the annotation json's "
        "categories order, so confirm with --classes-json if the two may differ (docs/model.md)"
    )
