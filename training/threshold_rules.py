"""The rules that pick a model's operating threshold (training.threshold applies them), importable
without numpy so that every command's --help can list them."""

from __future__ import annotations

RULES = ("best-f1", "best-f2", "precision")  # what each one picks: training.threshold's docstring
DEFAULT_RULE = "best-f1"
DEFAULT_MIN_PRECISION = 0.9  # the "precision" rule's target
