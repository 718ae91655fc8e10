"""Errors of the model package that several of its modules raise."""

from __future__ import annotations

from xscreen.errors import XscreenError


class WeightsError(XscreenError):
    """A weights file that cannot be read, is corrupted or does not fit the expected detector."""
