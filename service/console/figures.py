"""The shift summary's figures: alarm rate, verdicts per class, the false-alarm ratio, and the score
distribution against the model's reference with a drift flag (docs/console.md "Shift summary").

Drift test: the two-sample Kolmogorov-Smirnov statistic D (the largest gap between the two empirical
CDFs) of the shift's detection scores against the reference's, flagged when D exceeds the test's critical
value at alpha = 0.01, c(alpha) * sqrt((n + m) / (n m)) with c(0.01) = 1.628 (the large-sample
approximation, e.g. Press et al., Numerical Recipes, 14.3). With fewer than MIN_SCORES scores on either
side there is no verdict (drift None): too few detections say nothing.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import numpy as np

from xscreen.service.metrics import ServiceMetrics
from xscreen.store import ScanStore, ShiftSummary
from xscreen.store.reference import latest_model_sha256, reference_scores

KS_C_ALPHA = 1.628  # alpha = 0.01
MIN_SCORES = 30
REFERENCE_BAGS = 200  # the first bags of a model in the store make its reference distribution
HISTOGRAM_BINS = 10  # on [0, 1]


@dataclass(frozen=True)
class Drift:
    reference_model: str | None  # sha256 of the weights whose first bags are the reference
    reference_bags: int
    reference_scores: int
    shift_scores: int
    ks: float | None  # the KS statistic D
    threshold: float | None  # its critical value for these sample sizes
    drift: bool | None  # D > threshold; None with too few scores
    shift_histogram: list[float]  # fraction of scores per bin, HISTOGRAM_BINS bins on [0, 1]
    reference_histogram: list[float]


@dataclass(frozen=True)
class ShiftFigures:
    summary: ShiftSummary
    confirmed: int
    false_alarms: int
    missed: int
    false_alarm_ratio: float | None  # false alarms / (confirmed + false alarms), of the reviewed detections
    drift: Drift


def ks_statistic(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| over every sample value."""
    xa, xb = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    points = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, points, side="right") / len(xa)
    fb = np.searchsorted(xb, points, side="right") / len(xb)
    return float(np.max(np.abs(fa - fb)))


def ks_threshold(n: int, m: int) -> float:
    return KS_C_ALPHA * math.sqrt((n + m) / (n * m))


def histogram(scores: list[float]) -> list[float]:
    if not scores:
        return [0.0] * HISTOGRAM_BINS
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return [float(c) / len(scores) for c in counts]


def drift(shift: list[float], model: str | None, reference: tuple[int, list[float]]) -> Drift:
    bags, ref = reference
    ks = threshold = flag = None
    if len(shift) >= MIN_SCORES and len(ref) >= MIN_SCORES:
        ks, threshold = ks_statistic(shift, ref), ks_threshold(len(shift), len(ref))
        flag = ks > threshold
    return Drift(model, bags, len(ref), len(shift), ks, threshold, flag, histogram(shift), histogram(ref))


def shift_figures(
    store: ScanStore, start: datetime.datetime, end: datetime.datetime, reference_bags: int = REFERENCE_BAGS
) -> ShiftFigures:
    """The figures of the bags in [start, end) (blocking: database queries)."""
    summary = store.shift_summary(start, end)
    counts = summary.per_class.values()
    confirmed = sum(c.confirmed for c in counts)
    false_alarms = sum(c.false_alarms for c in counts)
    missed = sum(c.missed for c in counts)
    reviewed = confirmed + false_alarms
    model = latest_model_sha256(store)
    reference = reference_scores(store, model, reference_bags) if model else (0, [])
    return ShiftFigures(
        summary, confirmed, false_alarms, missed, false_alarms / reviewed if reviewed else None,
        drift(summary.scores, model, reference),
    )  # fmt: skip


def export(metrics: ServiceMetrics, figures: ShiftFigures) -> None:
    """Set the review gauges from the latest figures (NaN where a figure has no value yet)."""
    nan = float("nan")
    d = figures.drift
    metrics.review_alarm_rate.set(nan if figures.summary.alarm_rate is None else figures.summary.alarm_rate)
    metrics.review_false_alarm_ratio.set(
        nan if figures.false_alarm_ratio is None else figures.false_alarm_ratio
    )
    metrics.review_score_ks.set(nan if d.ks is None else d.ks)
    metrics.review_drift.set(-1 if d.drift is None else int(d.drift))
