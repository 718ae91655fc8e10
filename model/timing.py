"""Stage names of the model's inference timings and the device sync that keeps them honest (torch-free)."""

from __future__ import annotations

# Keys of ``ATSSDetector.predict(timings=...)``, in pipeline order; the service reports the same names.
MODEL_STAGES = ("preprocess", "backbone_fpn", "head_first", "la_grad", "head_second", "postprocess")


def sync(device) -> None:
    """Wait for queued work on a CUDA ``torch.device``, so a stage's time is its run, not its launch."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
