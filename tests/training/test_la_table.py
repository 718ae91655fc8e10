"""The LA experiment's table: mean +/- std over seeds in %, in the form of paper Tables III and VIII."""

from pathlib import Path

import pytest

from xscreen.training.la_experiment import format_tables


def _m(v, aps=None):
    return {"mAP": v, "AP50": 2 * v, "AP75": v / 2, "APs": aps, "APm": v, "APl": v}


def test_table_rows_are_mean_and_sample_std_in_percent():
    results = {
        "small_atss": {
            s: {"test": _m(v), "challenging": _m(v / 2)} for s, v in ((0, 0.10), (1, 0.20), (2, 0.30))
        },
        "small_lacls": {s: {"test": _m(0.25, 0.1), "challenging": _m(0.2)} for s in (0, 1, 2)},
    }
    text = format_tables(results, [0, 1, 2])
    lines = text.splitlines()
    assert "| Models | mAP | mAP_50 | mAP_75 | mAP_s | mAP_m | mAP_l |" in lines
    # ATSS test mAP: mean 20.0, sample std 10.0; AP50 doubles; APs undefined -> n/a
    assert "| ATSS | 20.0 ± 10.0 | 40.0 ± 20.0 | 10.0 ± 5.0 | n/a | 20.0 ± 10.0 | 20.0 ± 10.0 |" in lines
    assert (
        "| ATSS+LAcls | 25.0 ± 0.0 | 50.0 ± 0.0 | 12.5 ± 0.0 | 10.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |"
        in lines
    )
    # second table: challenging subset
    second = text.split("Challenging subset")[1]
    assert "| ATSS | 10.0 ± 5.0 |" in second and "| ATSS+LAcls | 20.0 ± 0.0 |" in second


def test_overrides_are_parsed_validated_and_name_the_config(tmp_path):
    import json

    import pytest

    from xscreen.errors import XscreenError
    from xscreen.training.la_experiment import parse_overrides, variant_config

    assert variant_config("small_lacls", tmp_path, None) == "small_lacls"
    o = parse_overrides(["frozen_stages=-1", "la_coeffs=[1,1,0]", "backbone_norm=group_norm"])
    assert o == {"frozen_stages": -1, "la_coeffs": [1, 1, 0], "backbone_norm": "group_norm"}
    path = variant_config("small_lacls", tmp_path, 256, o)
    cfg = json.loads(Path(path).read_text())
    assert (cfg["min_size"], cfg["frozen_stages"], cfg["la_coeffs"]) == (256, -1, [1.0, 1.0, 0.0])
    assert "frozen_stages=-1" in path and "la_coeffs=[1,1,0]" in path
    with pytest.raises(XscreenError, match="expected KEY=VALUE"):
        parse_overrides(["frozen_stages"])
    with pytest.raises(XscreenError, match="bad --set override.*nope"):
        variant_config("small_lacls", tmp_path, 256, {"nope": 1})


@pytest.mark.slow  # every variant and seed trained
def test_the_one_command_runs_every_variant_and_seed_and_resumes_from_its_cache(tmp_path, capsys):
    # A tiny but complete experiment through the real command: synthetic set, training, test-split and
    # challenging-subset evaluation, tables; a re-run reuses the finished runs.
    import json
    import subprocess
    import sys

    out = tmp_path / "exp"
    cmd = [
        sys.executable, "-m", "xscreen.cli", "la-experiment", "--out", str(out),
        "--variants", "small_atss", "small_lacls_release@la_coeffs=[1,1,1]", "--seeds", "0", "1",
        "--train-images", "8", "--weight-images", "2",
        "--val-images", "2", "--test-images", "6", "--scan-size", "128x128", "--input-size", "128",
        "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--set", "frozen_stages=-1",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"small_atss", "small_lacls_release@la_coeffs=[1,1,1]"}
    for per_seed in results.values():
        assert set(per_seed) == {"0", "1"}
        for seed in per_seed.values():
            assert 0.0 <= seed["test"]["mAP"] <= 1.0 and 0.0 <= seed["challenging"]["AP50"] <= 1.0
    for run in ("small_atss_seed0", "small_lacls_release+la_coeffs=[1,1,1]_seed1"):
        assert (out / "runs" / run / "last.safetensors").is_file()
        assert (out / "runs" / run / "done.json").is_file()
    table = (out / "tables.md").read_text()
    assert table.startswith("Command: `xscreen la-experiment")
    assert "| ATSS | " in table and "mean ± std over seeds 0, 1" in table
    assert "| ATSS+LAcls, released head, (1, 1, 1) | " in table
    # LA-weight statistics: one entry per FPN level for the LA runs, none for ATSS
    weights = json.loads((out / "la_weights.json").read_text())
    assert weights["small_atss"] == {"0": None, "1": None}
    levels = weights["small_lacls_release@la_coeffs=[1,1,1]"]["0"]
    assert len(levels) == 5 and all(0.0 <= lv["w_mean"] <= lv["w_max"] <= 0.5 for lv in levels)
    assert table.count("| ATSS+LAcls, released head, (1, 1, 1) | ") == 3  # test, challenging, weights
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing synthetic set" in second.stderr
    assert second.stdout.split("(2 seeds")[0] == first.stdout.split("(2 seeds")[0]  # the same tables
    # the usage errors in this process (xscreen.cli.main, what `python -m xscreen.cli` exits with):
    # each subprocess above pays ~4 s for importing torch before it fails
    from xscreen.cli import main

    capsys.readouterr()
    bad = main([*cmd[3:6], "--data", str(tmp_path / "none")])
    assert bad == 2 and "no annotations/test.json" in capsys.readouterr().err
    spec = main([*cmd[3:6], "--variants", "small_atss@frozen_stages"])
    err = capsys.readouterr().err
    assert spec == 2 and "expected KEY=VALUE" in err and "Traceback" not in err


def test_variant_specs_carry_their_own_overrides_and_labels(tmp_path):
    import json
    import re

    import pytest

    from xscreen.errors import XscreenError
    from xscreen.training.la_experiment import (
        RELEASE_STUDY,
        parse_variant,
        run_name,
        variant_config,
        variant_label,
    )

    assert parse_variant("small_atss") == ("small_atss", {})
    name, own = parse_variant("small_lacls_release@la_coeffs=[1,0,0]@frozen_stages=-1")
    assert (name, own) == ("small_lacls_release", {"la_coeffs": [1, 0, 0], "frozen_stages": -1})
    cfg = json.loads(Path(variant_config(name, tmp_path, 128, own)).read_text())
    assert (cfg["la_coeffs"], cfg["frozen_stages"], cfg["head_style"]) == ([1.0, 0.0, 0.0], -1, "released")
    # the four variants of the release study: distinct labels and distinct run folders
    labels = [variant_label(s) for s in RELEASE_STUDY]
    assert labels == [
        "ATSS",
        "ATSS, released head, LA off (1, 0, 0)",
        "ATSS+LAcls, released head, (1.5, 0, 1)",
        "ATSS+LAcls, released head, (1, 1, 1)",
    ]
    assert [run_name(s) for s in RELEASE_STUDY] == [
        "small_atss",
        "small_lacls_release+la_coeffs=[1,0,0]",
        "small_lacls_release",
        "small_lacls_release+la_coeffs=[1,1,1]",
    ]
    assert variant_label("small_lacls") == "ATSS+LAcls"
    assert variant_label("small_atss@frozen_stages=-1") == "ATSS, frozen_stages=-1"
    assert variant_label("small_lareg_release") == "ATSS+LAreg, released head, (0.5, 1, 0)"
    for bad in ("@la_coeffs=[1,0,0]", "small_lacls@", "small_lacls@la_coeffs"):
        with pytest.raises(XscreenError, match=re.escape(f"variant '{bad}'")):
            parse_variant(bad)


def test_weight_table_reports_each_lacls_variant_over_levels_and_seeds():
    from xscreen.training.la_experiment import format_weight_table

    lv = [{"w_mean": 1e-4, "w_max": 2e-3, "change": 1e-5}, {"w_mean": 3e-4, "w_max": 4e-3, "change": 3e-5}]
    stats = {"small_atss": {0: None, 1: None}, "small_lacls_release": {0: lv, 1: lv[:1]}}
    lines = format_weight_table(stats, 20).splitlines()
    assert lines[0].startswith("LA weights on the first 20 test scans")
    assert "ATSS |" not in "\n".join(lines)  # no LA, no row
    # means over the 3 level entries: w 1.67e-4, change 1.67e-5; max w 4e-3; worst change 3e-5
    assert "| ATSS+LAcls, released head, (1.5, 0, 1) | 1.7e-04 | 4.0e-03 | 1.7e-05 | 3.0e-05 |" in lines
    assert format_weight_table({"small_atss": {0: None}}, 20) == ""
