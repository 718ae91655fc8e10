"""Learning-rate schedule of the paper's recipe: linear warm-up, then step decay (docs/method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupStepSchedule:
    """lr(iteration) for SGD: linear warm-up from ``warmup_ratio * base_lr``, then x``gamma`` at steps.

    Follows mmdetection's ``schedule_1x`` used by the authors: ``warmup='linear'``,
    ``warmup_iters=500``, ``warmup_ratio=0.001``, ``step=[8, 11]`` of 12 epochs, gamma 0.1.
    Decay points are given in epochs of the reference schedule (``ref_epochs``) and placed at
    the same *fraction* of the actual run, so a shortened run (e.g. 6 epochs) keeps the shape
    of the 12-epoch schedule; with ``epochs == ref_epochs`` they fall exactly on epoch boundaries.
    The state of this schedule is just the global iteration number (it is a pure function).
    """

    base_lr: float
    total_iters: int
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    steps: tuple[float, ...] = (8, 11)
    ref_epochs: float = 12
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not self.base_lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.base_lr}")
        if self.total_iters < 1:
            raise ValueError(f"total iterations must be >= 1, got {self.total_iters}")
        if self.warmup_iters < 0:
            raise ValueError(f"warm-up iterations must be >= 0, got {self.warmup_iters}")
        if not 0 < self.warmup_ratio <= 1:
            raise ValueError(f"warm-up ratio must be in (0, 1], got {self.warmup_ratio}")

    @property
    def decay_iters(self) -> tuple[int, ...]:
        """Global iterations at which the lr is multiplied by ``gamma``."""
        return tuple(int(round(s / self.ref_epochs * self.total_iters)) for s in self.steps)

    def lr_at(self, iteration: int) -> float:
        """Learning rate for the 0-based global ``iteration``."""
        lr = self.base_lr * self.gamma ** sum(iteration >= d for d in self.decay_iters)
        if iteration < self.warmup_iters:
            # mmcv's linear warm-up: k = (1 - it / warmup_iters) * (1 - ratio); lr * (1 - k)
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            lr = lr * (1 - k)
        return lr


def scaled_lr(lr_for_batch_8: float, total_batch: int, reference_batch: int = 8) -> float:
    """Linear scaling rule: the paper's lr 0.01 is for a total batch of 8 (docs/method.md §2)."""
    if total_batch < 1:
        raise ValueError(f"total batch size must be >= 1, got {total_batch}")
    return lr_for_batch_8 * total_batch / reference_batch
