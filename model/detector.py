"""ATSSDetector: ResNet-FPN + ATSS head (+ LAcls / LAreg) with a torchvision-style forward contract."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from xscreen.errors import XscreenError
from xscreen.model.anchors import anchor_strides, feature_sizes, generate_anchors
from xscreen.model.assigner import atss_assign
from xscreen.model.backbone import ResNetFPN
from xscreen.model.box_coder import DistanceBinCoder
from xscreen.model.config import DetectorConfig, load_config
from xscreen.model.head import ATSSHead, HeadOutputs
from xscreen.model.label_aware import label_aware_forward
from xscreen.model.losses import atss_losses
from xscreen.model.postprocess import postprocess_detections
from xscreen.model.timing import MODEL_STAGES, sync
from xscreen.model.transform import group_by_padded_size, normalize, pad_batch, resize_to_fit


class DetectorInputError(XscreenError, ValueError):
    """Images or targets handed to the detector that do not follow its contract."""


class ATSSDetector(nn.Module):
    """ATSS R-FPN detector with the optional Label-aware head (Zhao et al., TIFS 2022).

    forward(images, targets=None):
      images: list of [3, H, W] float tensors, converted scans on the 0..255 scale (docs/method.md §1).
      training (``model.train()``): targets is a list of {"boxes": [K, 4] x1y1x2y2 in that image's
        pixels, "labels": int64 [K] 0-based into cfg.class_names}; returns a dict of scalar losses.
      eval: returns one {"boxes" [K, 4] in the input image's pixels, "scores" [K], "labels" [K]} per image.
    The model resizes (keep ratio, cfg.min_size/max_size), normalises (ImageNet mean/std) and pads.
    In eval, images are run in sub-batches of equal padded size, so a scan's detections do not depend
    on the other scans in its batch (GroupNorm statistics and border features would see extra padding).
    """

    def __init__(
        self,
        cfg: DetectorConfig,
        *,
        la_batched_grad: bool = False,
        channels_last: bool = True,
        la_grad_bf16: bool = False,
    ):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetFPN(
            cfg.depth,
            cfg.fpn_channels,
            cfg.frozen_stages,
            cfg.backbone_norm,
            bn_affine_trainable=cfg.bn_affine_trainable,
            p7_relu=cfg.fpn_p7_relu,
        )
        self.head = ATSSHead(
            cfg.fpn_channels,
            cfg.num_classes,
            cfg.stacked_convs,
            cfg.reg_channels,
            reg_conf_inputs=cfg.reg_conf_inputs if cfg.released else 0,
            reg_conf_channels=cfg.reg_conf_channels,
            reg_conf_stats=cfg.reg_conf_stats,
        )
        # one stacked vector-Jacobian product for g1 and g2 instead of two backward passes
        self.la_batched_grad = la_batched_grad
        # opt-in: LA's first prediction and gradient passes under bf16 autocast (about 2x faster on
        # CPUs with avx512_bf16/AMX); the second prediction and the output stay fp32
        self.la_grad_bf16 = la_grad_bf16
        # NHWC convolutions: ~25-30% faster on CPU (oneDNN) at R-50 800x1333, outputs equal to NCHW
        # up to float rounding (~1e-5 on the raw head outputs); state dicts are saved contiguous.
        self.channels_last = False
        if channels_last:
            self.use_channels_last()

    def use_channels_last(self, enabled: bool = True) -> ATSSDetector:
        """Run convolutions on NHWC tensors (oneDNN / cuDNN prefer it); same outputs up to rounding."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        # outside inference mode: parameters converted there would become inference tensors, which
        # the Label-aware gradient pass cannot use
        with torch.inference_mode(False), torch.no_grad():
            for p in self.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        return self

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def anchors_for(self, batch_shape, device=None) -> tuple[Tensor, list[int]]:
        """Anchors [A, 4] (P3..P7, row-major) and per-level counts for a padded batch [..., H, W]."""
        h, w = int(batch_shape[-2]), int(batch_shape[-1])
        return generate_anchors(feature_sizes(h, w), device=device or self.device)

    def _check_images(self, images) -> None:
        if not isinstance(images, list | tuple) or not images:
            raise DetectorInputError("images must be a non-empty list of [3, H, W] tensors")
        for i, im in enumerate(images):
            if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
                shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
                raise DetectorInputError(f"image {i}: expected a [3, H, W] tensor, got {shape}")
            if not im.is_floating_point():
                raise DetectorInputError(
                    f"image {i}: expected a float tensor on the 0..255 scale, got {im.dtype}"
                )
            if im.shape[1] < 2 or im.shape[2] < 2:
                raise DetectorInputError(f"image {i}: too small ({im.shape[1]}x{im.shape[2]})")

    def _check_targets(self, images, targets) -> None:
        if targets is None:
            raise DetectorInputError("training mode needs targets (one dict with boxes and labels per image)")
        if len(targets) != len(images):
            raise DetectorInputError(f"{len(images)} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            boxes, labels = t.get("boxes"), t.get("labels")
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
                raise DetectorInputError(f"target {i}: boxes must be a [K, 4] tensor")
            if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],):
                raise DetectorInputError(f"target {i}: labels must be a [K] tensor matching boxes")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.cfg.num_classes):
                raise DetectorInputError(f"target {i}: labels outside 0..{self.cfg.num_classes - 1}")
            if boxes.numel() and bool(((boxes[:, 2:] - boxes[:, :2]) <= 0).any()):
                raise DetectorInputError(f"target {i}: boxes need x2 > x1 and y2 > y1")

    def _resize(self, images: list[Tensor], boxes: list[Tensor] | None = None):
        out_images, out_boxes = [], []
        for i, im in enumerate(images):
            im = im.to(self.device, torch.float32)
            b = None if boxes is None else boxes[i].to(self.device, torch.float32)
            im, b = resize_to_fit(im, b, self.cfg.min_size, self.cfg.max_size)
            out_images.append(normalize(im))
            out_boxes.append(b)
        return out_images, out_boxes

    def resize_and_normalize(self, images: list[Tensor]) -> list[Tensor]:
        """Images as the network sees them before padding: resized to fit the config, normalised."""
        return self._resize(list(images))[0]

    # ------------------------------------------------------------------ network
    def forward_raw(
        self, batch: Tensor, la_targets: Tensor | None = None, timings: dict | None = None
    ) -> HeadOutputs:
        """Normalised padded batch [N, 3, H, W] -> HeadOutputs (cls_logits [N, A, C], bbox_reg [N, A, R],
        centerness [N, A, 1]).

        Levels P3..P7 concatenated, cells row-major (A = total anchors of ``anchors_for(batch.shape)``).
        R = cfg.reg_channels: 4 deltas, or 4*(reg_max+1) bin logits for LAreg. The LA loop runs inside;
        ``la_targets`` ([N, A] class or -1 for LAcls, [N, A, 4] bin or -1 for LAreg) selects training
        labels, None selects pseudo-labels.
        """
        t0 = time.perf_counter()
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(batch)
        if timings is not None:
            sync(batch.device)
            timings["backbone_fpn"] = timings.get("backbone_fpn", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
        if not self.cfg.uses_la:
            per_level = self.head.forward_plain(feats)
            if timings is not None:
                sync(batch.device)
                timings["head_first"] = timings.get("head_first", 0.0) + time.perf_counter() - t0
        else:
            level_targets = None
            if la_targets is not None:
                level_targets = self._split_levels(la_targets, [f.shape[-2:] for f in feats])
            per_level = label_aware_forward(
                self.head,
                feats,
                self.cfg,
                level_targets,
                batched=self.la_batched_grad,
                timings=timings,
                bf16=self.la_grad_bf16 and not self.training,
            )
        return self.head.flatten_levels(per_level, batch.shape[0])

    @staticmethod
    def _split_levels(flat_targets: Tensor, sizes) -> list[Tensor]:
        """[N, A] or [N, A, 4] -> per level [N, h, w] or [N, 4, h, w]."""
        out, start = [], 0
        n = flat_targets.shape[0]
        for h, w in sizes:
            t = flat_targets[:, start : start + h * w]
            start += h * w
            out.append(t.reshape(n, h, w) if t.dim() == 2 else t.reshape(n, h, w, 4).permute(0, 3, 1, 2))
        return out

    # ------------------------------------------------------------------ training
    def _la_targets(self, matched, anchors, strides, boxes, labels) -> Tensor | None:
        if self.cfg.la_cls:
            out = torch.full_like(matched, -1)
            for i in range(matched.shape[0]):
                pos = matched[i] >= 0
                out[i, pos] = labels[i][matched[i, pos]]
            return out
        if self.cfg.la_reg:
            coder = DistanceBinCoder(self.cfg.reg_max)
            out = torch.full((*matched.shape, 4), -1, dtype=torch.long, device=matched.device)
            for i in range(matched.shape[0]):
                pos = matched[i] >= 0
                if pos.any():
                    dist = coder.target_distances(anchors[pos], boxes[i][matched[i, pos]], strides[pos])
                    out[i, pos] = dist.floor().long()  # the bin that holds the target distance
            return out
        return None

    def _assign(self, batch: Tensor, boxes: list[Tensor], labels: list[Tensor]):
        """ATSS assignment for a padded batch: anchors, per-level counts, strides, matched GT index
        per anchor [N, A] (-1 background) and the LA training labels (None without LA)."""
        anchors, per_level = self.anchors_for(batch.shape)
        strides = anchor_strides(per_level, anchors.device)
        matched = torch.stack([atss_assign(anchors, per_level, b, self.cfg.atss_topk) for b in boxes])
        la_targets = self._la_targets(matched, anchors, strides, boxes, labels)
        return anchors, per_level, strides, matched, la_targets

    def compute_losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        self._check_images(images)
        self._check_targets(images, targets)
        imgs, boxes = self._resize(images, [t["boxes"] for t in targets])
        labels = [t["labels"].to(self.device, torch.long) for t in targets]
        batch, _ = pad_batch(imgs)
        anchors, per_level, strides, matched, la_targets = self._assign(batch, boxes, labels)
        outputs = self.forward_raw(batch, la_targets)
        return atss_losses(outputs, anchors, strides, matched, boxes, labels, self.cfg)

    # ------------------------------------------------------------------ inference
    def predict(self, images: list[Tensor], timings: dict | None = None) -> list[dict[str, Tensor]]:
        """Detections per image (eval forward). ``timings`` (a dict) receives seconds per stage."""
        self._check_images(images)
        stage = dict.fromkeys(MODEL_STAGES, 0.0)
        device = self.device
        with torch.no_grad():
            t0 = time.perf_counter()
            original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
            imgs, _ = self._resize(list(images))
            groups = group_by_padded_size([im.shape for im in imgs])
            batches = [(idx, pad_batch([imgs[i] for i in idx])) for idx in groups]
            sync(device)
            stage["preprocess"] += time.perf_counter() - t0
            results: list[dict | None] = [None] * len(images)
            for idx, (batch, sizes) in batches:
                outputs = self.forward_raw(batch, None, stage)
                t0 = time.perf_counter()
                anchors, per_level = self.anchors_for(batch.shape)
                dets = postprocess_detections(
                    outputs, anchors, per_level, sizes, [original_sizes[i] for i in idx], self.cfg
                )
                sync(device)
                stage["postprocess"] += time.perf_counter() - t0
                for i, d in zip(idx, dets, strict=True):
                    results[i] = d
        if timings is not None:
            for k, v in stage.items():
                timings[k] = timings.get(k, 0.0) + v
        return results  # type: ignore[return-value]

    def predict_with_oracle_labels(
        self, images: list[Tensor], targets: list[dict]
    ) -> list[dict[str, Tensor]]:
        """Detections with the LA labels of training (ATSS-assigned from ground truth) instead of the
        pseudo-labels of Sec. IV-D. An analysis tool (training.la_probe): it bounds what better
        pseudo-labels could give; deployment never has ground truth. One image at a time."""
        self._check_images(images)
        self._check_targets(images, targets)
        if not self.cfg.uses_la:
            raise DetectorInputError("oracle LA labels need an LA model (la_mode cls or reg)")
        out = []
        with torch.no_grad():
            for image, target in zip(images, targets, strict=True):
                original = (int(image.shape[-2]), int(image.shape[-1]))
                imgs, boxes = self._resize([image], [target["boxes"]])
                batch, sizes = pad_batch(imgs)
                labels = [target["labels"].to(self.device, torch.long)]
                anchors, per_level, _, _, la_targets = self._assign(batch, boxes, labels)
                outputs = self.forward_raw(batch, la_targets)
                out += postprocess_detections(outputs, anchors, per_level, sizes, [original], self.cfg)
        return out

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training:
            return self.compute_losses(images, targets)
        return self.predict(images)


def build_detector(cfg: DetectorConfig | str, **kwargs) -> ATSSDetector:
    """A randomly initialised detector for a config (name, path or DetectorConfig)."""
    return ATSSDetector(load_config(cfg), **kwargs)
