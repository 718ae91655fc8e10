"""argparse types shared by the xscreen commands and benchmarks: a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse
import datetime
import math
import re
from collections.abc import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """A finite number in [0, 1] (a score threshold)."""
    value = _number(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """A comma-separated list of whole numbers, each >= ``minimum``: '1,4,16' -> [1, 4, 16]."""
    item = int_at_least(minimum)

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}")
        return [item(p) for p in parts]

    return parse


def choice_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A comma-separated list of names, each one of ``choices``: 'png,raw' -> ['png', 'raw']."""

    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if not names or any(v not in choices for v in names):
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}; got {text!r}")
        return names

    return parse


def size_pair(minimum: int, example: str) -> Callable[[str], tuple[int, int]]:
    """Two whole numbers written ``AxB`` (either 'x'), each >= ``minimum``, in the order written.

    ``example`` says the order in messages, e.g. 'HEIGHTxWIDTH such as 800x1333'.
    """

    def parse(text: str) -> tuple[int, int]:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not m:
            raise argparse.ArgumentTypeError(f"expected {example}, got {text!r}")
        a, b = int(m.group(1)), int(m.group(2))
        if a < minimum or b < minimum:
            raise argparse.ArgumentTypeError(f"each side must be >= {minimum}, got {text!r}")
        return a, b

    return parse


def aware_time(text: str) -> datetime.datetime:
    """An ISO 8601 time with its time zone: 2026-03-01T00:00:00Z or 2026-03-01T01:00:00+01:00."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: e.g. 2026-03-01T00:00:00Z or ...+01:00")
    return value
