"""The exported graph's interface, shared by the exporter, the int8 quantiser and the ORT backend."""

from __future__ import annotations

from xscreen.errors import XscreenError

DEFAULT_OPSET = 17
MAX_OPSET = 20  # highest opset of torch.onnx's TorchScript-based exporter
INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "bbox_reg", "centerness")


class OnnxModelError(XscreenError):
    """An ONNX file that cannot be exported, read or served as an xscreen detector."""
