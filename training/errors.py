"""The training run's error type, shared by training.train and the engine, distributed and rundir modules."""

from __future__ import annotations

from xscreen.errors import XscreenError


class TrainError(XscreenError):
    """A training run that cannot start or had to stop (bad data, flags, output folder, diverged loss)."""
