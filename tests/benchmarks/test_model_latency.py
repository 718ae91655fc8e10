"""benchmarks/model_latency.py end to end at toy size, release variants included (no timing asserted)."""

from __future__ import annotations

import importlib


def test_small_variant_times_paper_and_release_heads_in_one_table(capsys):
    latency = importlib.import_module("model_latency")
    assert latency.VARIANTS["small"][-2:] == ("small_lacls_release", "small_lareg_release")
    models = "small_atss,small_lacls_release,small_lareg_release"
    argv = ["--size", "64x64", "--runs", "3", "--device", "cpu", "--no-memory", "--models", models]
    assert latency.main(argv) == 0
    out = capsys.readouterr().out
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines() if "(small_" in line
    }
    assert list(rows) == [
        "ATSS (small_atss)",
        "ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)",
        "ATSS+LAreg released (0.5, 1, 0) (small_lareg_release)",
    ]
    for cells in rows.values():
        assert float(cells[1]) > 0.0  # median seconds, not "failed"
    assert rows["ATSS (small_atss)"][3] == "1.00"  # / ATSS of the base row
    # the released LAcls skips the label-gradient pass but still has one (LA grads column > 0)
    assert float(rows["ATSS+LAcls released (1.5, 0, 1) (small_lacls_release)"][6]) > 0.0
    assert float(rows["ATSS (small_atss)"][6]) == 0.0
