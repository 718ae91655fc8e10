"""Interleaved timing of compared models, so that load drift on a shared machine hits each model alike.

The protocol, shared by ``model_latency.py`` and ``la_cost.py``:

1. every model gets its own warm-up call(s) first (in the listed order; not timed);
2. then ``rounds`` rounds, in each of which every model runs exactly once, in an order drawn by a
   seeded shuffle; a draw equal to the previous round's order is drawn again, so with two models the
   order alternates (A B, B A, A B, ...) and no model is always first;
3. per model the median seconds and their spread, and for a compared model the ratio to the base
   taken **per round** (both ran within the same round, under about the same load), reported as the
   median of those per-round ratios with their spread.

A runner is a callable taking ``timed`` (False for the warm-up) and returning ``(seconds, stages)``,
where ``stages`` is a dict of per-stage seconds (empty when the runner does not split its time).
"""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Runner = Callable[[bool], tuple[float, dict[str, float]]]


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of a list of numbers (quartiles by linear interpolation)."""

    median: float
    p25: float
    p75: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        ordered = sorted(values)
        return cls(
            median=statistics.median(ordered),
            p25=_quantile(ordered, 0.25),
            p75=_quantile(ordered, 0.75),
            min=ordered[0],
            max=ordered[-1],
        )

    def range_text(self, digits: int) -> str:
        """'min-max' with ``digits`` decimals, for a table cell."""
        return f"{self.min:.{digits}f}-{self.max:.{digits}f}"


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolating linearly between ranks (numpy's default)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timings:
    """What ``interleave`` measured: per model its per-round seconds and stage dicts, in round order."""

    orders: list[tuple[str, ...]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def total(self, name: str) -> Spread:
        """Median and spread of one model's seconds over the rounds."""
        return Spread.of(self.seconds[name])

    def stage_median(self, name: str, stage: str) -> float:
        """Median seconds of one stage over the rounds (0.0 where a round did not book it)."""
        return statistics.median(s.get(stage, 0.0) for s in self.stages[name])

    def ratios(self, name: str, base: str) -> list[float]:
        """Per round, ``name``'s seconds over ``base``'s seconds in that same round."""
        return [a / b for a, b in zip(self.seconds[name], self.seconds[base], strict=True)]

    def ratio(self, name: str, base: str) -> Spread:
        """Median and spread of the per-round ratios of ``name`` to ``base``."""
        return Spread.of(self.ratios(name, base))


def round_orders(names: Sequence[str], rounds: int, seed: int = 0) -> list[tuple[str, ...]]:
    """The run order of each round: a seeded shuffle, never the same as the round before."""
    rng = random.Random(seed)
    orders: list[tuple[str, ...]] = []
    for _ in range(rounds):
        order = tuple(rng.sample(list(names), len(names)))
        while len(names) > 1 and orders and order == orders[-1]:
            order = tuple(rng.sample(list(names), len(names)))
        orders.append(order)
    return orders


def _error_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def interleave(
    runners: Mapping[str, Runner],
    rounds: int,
    *,
    seed: int = 0,
    warmup: int = 1,
    keep_going: bool = False,
    log: Callable[[str], None] | None = None,
) -> Timings:
    """Warm each runner up ``warmup`` times, then time ``rounds`` rounds in shuffled order (module doc).

    With ``keep_going`` a runner whose warm-up raises is recorded in ``failed`` (type and first line of
    the error) and left out of the rounds; without it the error propagates.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if log is None:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    out = Timings()
    for name, run in runners.items():
        try:
            for _ in range(warmup):
                run(False)
        except Exception as exc:  # one model failing in a setting (e.g. bf16) must not end the table
            if not keep_going:
                raise
            out.failed[name] = _error_line(exc)
    names = [n for n in runners if n not in out.failed]
    out.seconds = {n: [] for n in names}
    out.stages = {n: [] for n in names}
    out.orders = round_orders(names, rounds, seed) if names else []
    for r, order in enumerate(out.orders):
        for name in order:
            seconds, stages = runners[name](True)
            out.seconds[name].append(seconds)
            out.stages[name].append(stages)
            log(f"# round {r + 1}: {name} {seconds:.3f} s")
    return out
