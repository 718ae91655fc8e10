"""benchmarks/_interleave.py: the timing protocol (warm-up, rounds, shuffled order, per-round ratios).

Fake runners record the order in which they are called and return given durations, so the protocol
and the statistics are asserted exactly; nothing is timed.
"""

from __future__ import annotations

import importlib

import pytest

interleave_mod = importlib.import_module("_interleave")
interleave, round_orders, Spread = (
    interleave_mod.interleave,
    interleave_mod.round_orders,
    interleave_mod.Spread,
)


def _fake(durations: dict[str, list[float]], calls: list[tuple[str, bool]]):
    """Runners that append (name, timed) to ``calls`` and return the next of their durations when timed
    (each model runs once per round, so its k-th timed call is round k)."""

    def make(name: str):
        left = iter(durations[name])

        def run(timed: bool) -> tuple[float, dict[str, float]]:
            calls.append((name, timed))
            if not timed:
                return 99.0, {}  # a warm-up's time must not reach the results
            seconds = next(left)
            return seconds, {"backbone_fpn": seconds / 2}

        return run

    return {name: make(name) for name in durations}


def test_each_model_warms_up_before_rounds_that_run_every_model_once():
    names = ["atss", "lacls", "lareg", "fcos"]
    calls: list[tuple[str, bool]] = []
    rounds = 6
    out = interleave(_fake({n: [1.0] * rounds for n in names}, calls), rounds, log=lambda line: None)
    # the warm-ups, one per model, all come before the first timed run
    assert calls[: len(names)] == [(n, False) for n in names]
    timed = calls[len(names) :]
    assert all(is_timed for _, is_timed in timed) and len(timed) == rounds * len(names)
    per_round = [tuple(n for n, _ in timed[i : i + len(names)]) for i in range(0, len(timed), len(names))]
    assert per_round == out.orders  # the recorded orders are the orders that ran
    for order in per_round:
        assert sorted(order) == sorted(names)  # every model exactly once per round
    # shuffled: no round repeats the one before it, and the first slot is not always the same model
    assert all(a != b for a, b in zip(per_round, per_round[1:], strict=False))
    assert len({order[0] for order in per_round}) > 1
    assert out.seconds == {n: [1.0] * rounds for n in names}  # no warm-up time (99.0) in the results


def test_orders_are_seeded_and_two_models_alternate():
    names = ["a", "b", "c", "d", "e"]
    assert round_orders(names, 8, seed=3) == round_orders(names, 8, seed=3)
    assert round_orders(names, 8, seed=3) != round_orders(names, 8, seed=4)
    # two models: never the same order twice in a row, so A B, B A, A B, ... from either start
    pairs = round_orders(["atss", "lacls"], 7, seed=0)
    assert all(a == tuple(reversed(b)) for a, b in zip(pairs, pairs[1:], strict=False))
    assert round_orders(["only"], 3) == [("only",)] * 3


def test_ratio_is_the_median_of_per_round_ratios_with_its_spread():
    durations = {"atss": [1.0, 4.0, 10.0], "lacls": [2.0, 6.0, 30.0]}
    out = interleave(_fake(durations, []), 3, log=lambda line: None)
    # per round 2/1, 6/4, 30/10 = 2.0, 1.5, 3.0; the ratio of the medians (6/4 = 1.5) is not the answer
    assert out.ratios("lacls", "atss") == [2.0, 1.5, 3.0]
    ratio = out.ratio("lacls", "atss")
    assert (ratio.median, ratio.min, ratio.max) == (2.0, 1.5, 3.0)
    assert (ratio.p25, ratio.p75) == (1.75, 2.5)
    assert ratio.range_text(2) == "1.50-3.00"
    assert out.ratio("atss", "atss") == Spread(1.0, 1.0, 1.0, 1.0, 1.0)
    total = out.total("lacls")
    assert (total.median, total.min, total.max) == (6.0, 2.0, 30.0)
    assert out.stage_median("lacls", "backbone_fpn") == 3.0
    assert out.stage_median("lacls", "la_grad") == 0.0  # a stage no round booked


def test_spread_quartiles_interpolate_between_ranks():
    s = Spread.of([4.0, 1.0, 3.0, 2.0])
    assert (s.median, s.p25, s.p75, s.min, s.max) == (2.5, 1.75, 3.25, 1.0, 4.0)
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_a_failing_warm_up_is_reported_and_left_out_of_the_rounds():
    calls: list[tuple[str, bool]] = []
    runners = _fake({"atss": [1.0, 1.0, 1.0], "bf16": []}, calls)

    def broken(timed: bool):
        calls.append(("bf16", timed))
        raise RuntimeError("no bf16 kernel\nsecond line")

    runners["bf16"] = broken
    out = interleave(runners, 3, keep_going=True, log=lambda line: None)
    assert out.failed == {"bf16": "RuntimeError: no bf16 kernel"}
    assert calls.count(("bf16", False)) == 1 and ("bf16", True) not in calls
    assert list(out.seconds) == ["atss"] and out.orders == [("atss",)] * 3
    with pytest.raises(RuntimeError, match="no bf16 kernel"):
        interleave(runners, 3, log=lambda line: None)
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        interleave(runners, 0)


def test_every_timed_run_is_logged_with_its_round():
    lines: list[str] = []
    interleave(_fake({"atss": [0.5, 0.25], "lacls": [1.0, 0.75]}, []), 2, log=lines.append)
    assert sorted(lines) == [
        "# round 1: atss 0.500 s",
        "# round 1: lacls 1.000 s",
        "# round 2: atss 0.250 s",
        "# round 2: lacls 0.750 s",
    ]
