"""benchmarks/model_latency.py end to end at toy size, release variants included (no timing asserted),
and its table from known per-round seconds (exact numbers)."""

from __future__ import annotations

import argparse
import importlib
import re

latency = importlib.import_module("model_latency")
Timings = importlib.import_module("_interleave").Timings


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows by their first cell, cells stripped."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()]
    return {row[0]: row for row in rows if len(row) > 1 and row[0] not in ("model", "---")}


def test_small_variant_times_paper_and_release_heads_in_one_table(capsys):
    assert latency.VARIANTS["small"][-2:] == ("small_lacls_release", "small_lareg_release")
    models = "small_atss,small_lacls_release,small_lareg_release"
    argv = ["--size", "64x64", "--runs", "3", "--device", "cpu", "--no-memory", "--models", models]
    assert latency.main(argv) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert list(rows) == [
        "ATSS (small_atss)",
        "ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)",
        "ATSS+LAreg released (0.5, 1, 0) (small_lareg_release)",
    ]
    for cells in rows.values():
        low, high = (float(x) for x in cells[2].split("-"))
        assert low <= float(cells[1]) <= high  # median seconds inside the min-max, not "failed"
    assert rows["ATSS (small_atss)"][4:6] == ["1.00", "1.00-1.00"]  # / ATSS of the base row, every round
    # the released LAcls skips the label-gradient pass but still has one (LA grads column > 0)
    assert float(rows["ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)"][8]) > 0.0
    assert float(rows["ATSS (small_atss)"][8]) == 0.0
    # the protocol: three rounds, each running every model once, in orders that change between rounds
    rounds: dict[int, list[str]] = {}
    for r, name in re.findall(r"^# round (\d+): (\S+) ", captured.err, flags=re.M):
        rounds.setdefault(int(r), []).append(name)
    assert sorted(rounds) == [1, 2, 3]
    assert all(sorted(order) == sorted(models.split(",")) for order in rounds.values())
    assert rounds[1] != rounds[2] != rounds[3]


def test_table_ratios_are_medians_of_per_round_ratios():
    """From known seconds: '/ ATSS' is the median of the per-round ratios (not the ratio of medians),
    with their min-max beside it, and a model that failed keeps its row."""
    names = ["small_atss", "small_lacls_release", "small_lareg", "fcos"]
    stage = {
        "backbone_fpn": 0.5,
        "head_first": 0.25,
        "la_grad": 0.125,
        "head_second": 1.0,
        "postprocess": 0.0,
    }
    timings = Timings(
        orders=[tuple(names[:2] + names[3:])] * 3,
        seconds={
            "small_atss": [1.0, 4.0, 10.0],
            "small_lacls_release": [2.0, 6.0, 30.0],
            "fcos": [2.0, 2.0, 5.0],
        },
        stages={"small_atss": [stage] * 3, "small_lacls_release": [stage] * 3, "fcos": [{}] * 3},
        failed={"small_lareg": "RuntimeError: no kernel"},
    )
    args = argparse.Namespace(
        size=(64, 64), batch=1, dtype="fp32", device="cpu", runs=3, order_seed=0, models=names
    )
    out = latency.latency_table(names, timings, {"small_atss": 123.4}, args)
    assert "3 rounds" in out and "medians of the per-round ratios" in out
    rows = _rows(out)
    # per round 2/1, 6/4, 30/10 = 2.0, 1.5, 3.0: median 2.00 (the ratio of medians would be 1.50);
    # to FCOS 2/2, 6/2, 30/5 = 1.0, 3.0, 6.0: median 3.00; ATSS to FCOS 0.5, 2.0, 2.0: median 2.00
    assert rows["ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)"] == [
        "ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)",
        "6.000",
        "2.000-30.000",
        "3.00",
        "2.00",
        "1.50-3.00",
        "0.500",
        "0.250",
        "0.125",
        "1.000",
        "0.000",
        "-",
    ]
    assert rows["ATSS (small_atss)"][1:6] == ["4.000", "1.000-10.000", "2.00", "1.00", "1.00-1.00"]
    assert rows["ATSS (small_atss)"][-1] == "123"
    assert rows["FCOS R-50 (torchvision) (fcos)"][1:7] == [
        "2.000",
        "2.000-5.000",
        "1.00",
        "0.50",
        "0.50-2.00",
        "-",
    ]
    failed = rows["ATSS+LAreg (small_lareg)"]
    assert failed[1] == "failed" and "RuntimeError: no kernel" in failed and len(failed) == 12
