"""`xscreen detect` with several --high/--low pairs: one bag, one batch, one answer with each view's
detections equal to that view run alone; unpaired flags, too many views and --render of a bag are one-line
usage errors, refused before the model loads.

The bag is the sample scan of examples/ (a top view) and the same scan mirrored and 32 px wider (a side
view of another size), run by the bundled weights at their own threshold."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from tests.support.dicos_cases import assert_conformant
from xscreen.cli import main
from xscreen.inference.response import BagResponse, DetectResponse
from xscreen.scans import read_scan
from xscreen.scans.dicos import tdr

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOP = (str(EXAMPLES / "bag_high.png"), str(EXAMPLES / "bag_low.png"))


def argv(*pairs: tuple[str, str], extra: tuple[str, ...] = ()) -> list[str]:
    out = ["detect", "--device", "cpu", *extra]
    for high, low in pairs:
        out += ["--high", high, "--low", low]
    return out


def run(args: list[str]) -> str:
    """stdout of a successful ``xscreen`` run in this process."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def side(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("side")
    paths = []
    for name in TOP:
        image = np.pad(read_scan(name)[:, ::-1], ((0, 0), (0, 32)), mode="edge")  # 256 rows x 288
        path = folder / Path(name).with_suffix(".npy").name
        np.save(path, np.ascontiguousarray(image))
        paths.append(str(path))
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def alone(side) -> list[DetectResponse]:
    """Each view run as a single pair."""
    return [DetectResponse.model_validate_json(run(argv(pair, extra=("--json",)))) for pair in (TOP, side)]


def test_bag_json_answers_each_view_as_alone(side, alone):
    bag = BagResponse.model_validate_json(run(argv(TOP, side, extra=("--json", "--scan-id", "bag-7"))))
    assert bag.scan_id == "bag-7" and bag.batch_size == 2  # the two views in one batch
    assert [(v.view, v.source.part) for v in bag.views] == [(0, 0), (1, 1)]
    assert [(v.image.width, v.image.height) for v in bag.views] == [(256, 256), (288, 256)]
    for view, single in zip(bag.views, alone, strict=True):
        assert single.detections, "the bundled weights find the sample bag's objects, mirrored too"
        assert [d.class_name for d in view.detections] == [d.class_name for d in single.detections]
        for got, want in zip(view.detections, single.detections, strict=True):
            assert got.score == pytest.approx(want.score, abs=1e-4)  # batch float noise only
            assert list(got.box.model_dump().values()) == pytest.approx(
                list(want.box.model_dump().values()), abs=0.05
            )
        assert view.alarm == single.alarm
    assert bag.alarm == any(s.alarm for s in alone) and bag.score_threshold == alone[0].score_threshold
    assert {"decode", "convert", "inference", "total"} <= set(bag.timings)


def test_bag_table_and_tdr(side, alone, tmp_path):
    out = run(argv(TOP, side, extra=("--tdr", str(tmp_path / "bag.dcm")))).splitlines()
    counts = [len(a.detections) for a in alone]
    assert out[0].startswith(f"ALARM: bag of 2 views, {sum(counts)} detection(s) (small_lacls_release_demo, ")
    assert out[1] == f"view 0: {counts[0]} detection(s) in 256x256 scan ({TOP[0]}): ALARM"
    assert out[2 + counts[0]] == f"view 1: {counts[1]} detection(s) in 288x256 scan ({side[0]}): ALARM"
    assert len(out) == 1 + 2 + sum(counts) + 1 and out[-1] == f"wrote {tmp_path / 'bag.dcm'}"
    for line, d in zip(out[2 : 2 + counts[0]], alone[0].detections, strict=True):
        assert line.startswith(f"  {d.class_name} ")
    report = (tmp_path / "bag.dcm").read_bytes()
    assert_conformant(report)
    parsed = tdr.read_tdr(report)
    assert len(parsed.references) == 4 and parsed.alarm == "ALARM"  # every view's two images
    assert [sum(o.view == i for o in parsed.objects) for i in range(2)] == counts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--high", TOP[0], "--low", TOP[1], "--high", TOP[0]],
            "--high given 2 time(s) and --low 1 time(s): each view is one --high and one --low, "
            "paired in order",
        ),
        (
            ["--high", TOP[0], "--low", TOP[1]] * 3 + ["--max-views", "2"],
            "3 views; a bag has at most 2 (--max-views)",
        ),
        (["--high", TOP[0], "--low", TOP[1]] * 9, "9 views; a bag has at most 8 (--max-views)"),
        (
            ["--high", TOP[0], "--low", TOP[1]] * 2 + ["--render", "out.png"],
            "--render draws one view; this bag has 2 (give one --high/--low pair)",
        ),
        (
            ["--high", TOP[0], "--low", TOP[1], "--high", TOP[0], "--low", "missing.png"],
            "--low missing.png: no such file",
        ),
    ],
    ids=["unpaired", "over_max_views", "over_default", "render_a_bag", "missing_file"],
)
def test_bad_bags_are_one_line_usage_errors(args, message, capsys):
    assert main(["detect", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err == f"xscreen detect: error: {message}\n"


def test_a_bad_view_is_named(side, capsys):
    assert main(argv(TOP, (side[0], TOP[1]))) == 2
    err = capsys.readouterr().err
    assert err.startswith("xscreen detect: error: view 1: ") and "Traceback" not in err
