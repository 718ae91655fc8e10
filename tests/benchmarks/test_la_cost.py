"""benchmarks/la_cost.py at toy size: tower passes per stage, the FLOP-bound floor, usage errors.

FLOPs are analytic (FlopCounterMode), so they are asserted exactly or nearly; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import statistics

import pytest

from xscreen.model import load_config
from xscreen.model.anchors import feature_sizes

BASE, RELEASED, PAPER = "small_atss", "small_lacls_release", "small_lacls"


def _macs_per_cell(name: str) -> dict[str, int]:
    """Multiply-adds per head cell of the pieces of an ATSS head (every head conv is 3x3, stride 1, over
    the same P3-P7 cells, so FLOP ratios are ratios of these). reg_conf: 1x1 convs 4 -> 16 -> 1."""
    cfg = load_config(name)
    k, ch = 9, cfg.fpn_channels
    tower = cfg.stacked_convs * k * ch * ch
    quality = (
        (cfg.reg_conf_inputs * cfg.reg_conf_channels + cfg.reg_conf_channels) if cfg.released else k * ch
    )
    return {
        "unit": tower + k * ch * cfg.num_classes,  # classification tower + atss_cls
        "tower": tower,
        "reg_out": k * ch * cfg.reg_channels + quality,  # atss_reg + centerness or reg_conf
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of 3 rounds (about 10 s on 2 busy cores): its JSON record and its printed tables."""
    la_cost = importlib.import_module("la_cost")
    path = tmp_path_factory.mktemp("la_cost") / "la_cost.json"
    argv = ["--base", BASE, "--models", f"{RELEASED},{PAPER}", "--size", "128x128", "--runs", "3"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert la_cost.main([*argv, "--device", "cpu", "--json", str(path)]) == 0
    return json.loads(path.read_text()), out.getvalue()


def test_tower_passes_per_stage(run):
    data, _ = run
    res = data["results"]
    stages = {name: {k: s["tower_passes"] for k, s in r["stages"].items()} for name, r in res.items()}
    assert list(stages[BASE]) == ["backbone_fpn", "head"]
    assert (
        list(stages[RELEASED])
        == list(stages[PAPER])
        == ["backbone_fpn", "head_first", "la_grad", "head_second"]
    )
    # the backbone is the same network in every model
    assert len({r["stages"]["backbone_fpn"]["gflop"] for r in res.values()}) == 1
    # ATSS: classification + regression tower once (atss_reg/centerness are 5 outputs against 12 classes)
    assert stages[BASE]["head"] == pytest.approx(2.0, abs=0.05)
    for name in (RELEASED, PAPER):
        assert stages[name]["head_first"] == pytest.approx(1.0, abs=1e-9)
    # convolution_backward to the input costs what the forward did: the released LAcls (b = 0) runs one
    # gradient pass, the paper LAcls two (method.md §7.5)
    assert stages[RELEASED]["la_grad"] == pytest.approx(1.0, abs=1e-6)
    assert stages[PAPER]["la_grad"] == pytest.approx(2.0, abs=1e-6)
    # heads: ATSS ~2, released ~5, paper ~6 tower passes
    assert res[BASE]["head_tower_passes"] == pytest.approx(2.0, abs=0.05)
    assert res[RELEASED]["head_tower_passes"] == pytest.approx(5.0, abs=0.2)
    assert res[PAPER]["head_tower_passes"] == pytest.approx(6.0, abs=0.1)
    for r in res.values():
        head = sum(s["tower_passes"] for k, s in r["stages"].items() if k != "backbone_fpn")
        assert r["head_tower_passes"] == pytest.approx(head, rel=1e-9)


def test_second_prediction_is_one_cls_tower_and_the_reg_tower_twice(run):
    """Exactly, from the architecture (method.md §7.4). The released LAcls is 5.16, not 5.0, at this toy
    size: its atss_reg has 4 x 17 bin outputs (0.25 passes with 128 channels and 2 convs); the regression
    tower without a classifier is 0.955 of a pass, twice. At R-50 (256 ch, 4 convs) the same is 5.04."""
    data, _ = run
    unit = _macs_per_cell(BASE)["unit"]
    for name, grads in ((RELEASED, 1), (PAPER, 2)):
        m = _macs_per_cell(name)
        second = (m["unit"] + 2 * m["tower"] + m["reg_out"]) / unit
        res = data["results"][name]
        assert res["stages"]["head_second"]["tower_passes"] == pytest.approx(second, rel=1e-6)
        assert res["head_tower_passes"] == pytest.approx(1 + grads + second, rel=1e-6)
    m = _macs_per_cell(BASE)
    base_head = data["results"][BASE]["head_tower_passes"]
    assert base_head == pytest.approx((m["unit"] + m["tower"] + m["reg_out"]) / unit, rel=1e-6)
    cells = sum(h * w for h, w in feature_sizes(128, 128))  # P3-P7: 16x16 + 8x8 + 4x4 + 2x2 + 1x1
    assert data["tower_pass_gflop"] * 1e9 == pytest.approx(2 * unit * cells, rel=1e-9)  # multiply-add = 2


def test_floor_recomputed_from_the_numbers(run):
    data, out = run
    res, summary = data["results"], data["summary"]
    b = res[BASE]["stages"]["backbone_fpn"]["seconds"]
    r = res[BASE]["stages"]["head"]["gflop"] / res[BASE]["stages"]["head"]["seconds"]
    r_max = max(
        s["gflop"] / s["seconds"] for x in res.values() for k, s in x["stages"].items() if k != "backbone_fpn"
    )
    assert summary["backbone_fpn_seconds"] == b
    assert summary["base_head_gflop_per_s"] == pytest.approx(r, rel=1e-9)
    assert summary["fastest_head_gflop_per_s"] == pytest.approx(r_max, rel=1e-9)
    base = res[BASE]["head_gflop"]
    for name, x in res.items():
        s = summary["models"][name]
        assert s["floor"] == pytest.approx((b + x["head_gflop"] / r) / (b + base / r), rel=1e-9)
        assert s["ratio_at_fastest"] == pytest.approx(
            (b + x["head_gflop"] / r_max) / (b + base / r), rel=1e-9
        )
        # measured: the median of the per-round ratios, both models timed in the same round
        pairs = zip(x["total"]["round_seconds"], res[BASE]["total"]["round_seconds"], strict=True)
        rounds = [a / b for a, b in pairs]
        assert s["round_ratios"] == rounds and len(rounds) == 3
        assert s["measured_ratio"] == statistics.median(rounds)
        assert (s["measured_ratio_min"], s["measured_ratio_max"]) == (min(rounds), max(rounds))
        assert x["total"]["seconds"] == statistics.median(x["total"]["round_seconds"])
        # an invariant, not a timing: the convolutions' time is part of the head call's wall time
        assert 0.0 < x["head_conv_share"] <= 1.0
    assert summary["models"][BASE]["floor"] == pytest.approx(1.0)
    # more tower passes than the base head: a floor above 1 whatever the machine's speed
    assert 1.0 < summary["models"][RELEASED]["floor"] < summary["models"][PAPER]["floor"]
    # the printed tables carry the same numbers
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")
    ]
    assert [RELEASED, "la_grad", f"{res[RELEASED]['stages']['la_grad']['gflop']:.3f}", "1.00"] in [
        row[:4] for row in rows
    ]
    summary_row = next(row for row in rows if row[0].endswith(f"({RELEASED})"))
    released = summary["models"][RELEASED]
    assert summary_row[1:5] == [
        f"{res[RELEASED]['head_tower_passes']:.2f}",
        f"{released['measured_ratio']:.3f}",
        f"{released['measured_ratio_min']:.3f}-{released['measured_ratio_max']:.3f}",
        f"{released['floor']:.3f}",
    ]


def test_models_are_timed_in_shuffled_rounds_after_a_warm_up(run):
    """The protocol of benchmarks/_interleave.py: every model once per round, the order changing."""
    data, out = run
    names = [BASE, RELEASED, PAPER]
    assert data["runs"] == 3 and data["order_seed"] == 0
    assert [sorted(order) for order in data["orders"]] == [sorted(names)] * 3
    assert all(a != b for a, b in zip(data["orders"], data["orders"][1:], strict=False))
    for x in data["results"].values():
        for entry in [*x["stages"].values(), x["total"]]:
            assert len(entry["round_seconds"]) == 3
            assert entry["seconds_min"] <= entry["seconds"] <= entry["seconds_max"]
    assert "one warm-up per model, then 3 rounds" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "nosuch"], "--models: no detector config 'nosuch'"),
        (["--models", f"{RELEASED},{BASE}"], f"--models: {BASE} has la_mode 'none'"),
        (["--base", PAPER], f"--base: {PAPER} has la_mode 'cls'"),
        (["--size", "16x16"], "each side must be >= 32"),
        (["--runs", "0"], "argument --runs: must be >= 1, got 0"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(argv, message, capsys):
    la_cost = importlib.import_module("la_cost")
    with pytest.raises(SystemExit) as info:
        la_cost.main(["--base", BASE, "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], err
