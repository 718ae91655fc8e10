"""The README's quick start, run as a new user would run it: its marked blocks, word for word, on the
sample scans in examples/, with a real `xscreen serve` in the background.

The only change made to a block is the port: the service block's ``127.0.0.1:8000`` becomes a free port
(and ``XSCREEN_PORT`` says the same to ``xscreen serve``), so that the test does not collide with a
service already running here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from xscreen.scans import read_scan
from xscreen.scans.picture import pseudo_colour

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLES = REPO / "examples"
MARKER = "<!-- quickstart: the test runs this"


def marked_blocks() -> list[str]:
    """The fenced blocks that follow a quick-start marker comment, in README order."""
    return re.findall(re.escape(MARKER) + r"[^\n]*-->\n```[a-z]*\n(.*?)```", README.read_text(), re.S)


def _environment(**extra: str) -> dict[str, str]:
    """This environment less its XSCREEN_* settings (the README assumes none), with this venv's `xscreen`
    first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def _wait_for_group(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def run_block(block: str, cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """``block`` as a bash script in ``cwd`` (stops at the first failing command). Its whole process group
    is stopped as soon as the script ends, so a server it started never outlives it. Output goes to files,
    not pipes: a server left running would hold a pipe open."""
    (cwd / "block.sh").write_text(block)
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            ["bash", "-e", "block.sh"],
            cwd=cwd,
            env=_environment(**env),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            if proc.returncode == 0:
                _wait_for_group(proc.pid, 30.0)  # what the block stopped itself finishes on its own
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
    report = f"{block}\nexit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr[-3000:]}"
    assert proc.returncode is not None, f"the block did not finish in {timeout} s:\n{report}"
    assert proc.returncode == 0, report
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder that looks like the checkout's root to the quick start (examples/ in it), kept apart from
    the repository so the files the commands write land in a temporary folder."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    return tmp_path


def _truth() -> list[tuple[str, list[float]]]:
    coco = json.loads((EXAMPLES / "bag_truth.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return [(names[a["category_id"]], a["bbox"]) for a in coco["annotations"]]


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_finds_the_bag(answer: dict) -> None:
    """The bundled model's answer: its identity and threshold, and every object of the bag found."""
    assert answer["model"]["name"] == "small_lacls_release_demo" and answer["model"]["version"] == "0.4.0"
    assert answer["score_threshold"] == pytest.approx(0.1718)
    assert answer["image"] == {"width": 256, "height": 256}
    found = [(d["class_name"], [d["box"][k] for k in ("x1", "y1", "x2", "y2")]) for d in answer["detections"]]
    assert all(d["score"] >= answer["score_threshold"] for d in answer["detections"])
    for name, (x, y, w, h) in _truth():
        assert any(n == name and _iou(box, [x, y, x + w, y + h]) >= 0.5 for n, box in found), (name, found)


def tdr_objects(path: Path) -> int:
    """The number of potential threat objects in a DICOS TDR file (Threat Sequence, 4010,1011)."""
    ds = pydicom.dcmread(path)
    assert ds.Modality == "TDR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.501.3"
    return len(ds[0x4010, 0x1011].value)


def _table_rows(text: str) -> list[tuple[str, float, list[int]]]:
    rows = re.findall(r"^  (\S.*?)\s{2,}(?:cutter|liquid container)\s+([0-9.]+)\s+\[([^\]]*)\]$", text, re.M)
    return [(name, float(score), [int(v) for v in box.split(",")]) for name, score, box in rows]


def _readme_table() -> str:
    """The output the README says the first quick-start command prints."""
    text = README.read_text()
    return re.search(r"The first command prints[^\n]*\n\n```\n(.*?)```", text, re.S).group(1)


def test_readme_marks_the_quick_start_blocks():
    blocks = marked_blocks()
    assert len(blocks) == 3, "README: the offline block, the service block and the unknown-flag example"
    offline, service, _ = blocks
    assert "xscreen detect --high examples/bag_high.png --low examples/bag_low.png\n" in offline
    assert "xscreen serve &" in service and "127.0.0.1:8000/detect" in service


@pytest.mark.slow
def test_quick_start_offline(checkout: Path):
    out = run_block(marked_blocks()[0], checkout, timeout=600).stdout
    tables = re.split(r"^(?=\d+ detection\(s\) in )", out, flags=re.M)[1:]
    assert len(tables) == 2, out  # the PNG pair's and the DICOS pair's
    printed, claimed = _table_rows(tables[0]), _table_rows(_readme_table())
    assert _table_rows(tables[1]) == printed  # the DX pair holds the same pixels
    assert len(printed) == len(claimed) >= 1, out
    for (name, score, box), (c_name, c_score, c_box) in zip(printed, claimed, strict=True):
        assert name == c_name and abs(score - c_score) <= 0.002 and np.abs(np.subtract(box, c_box)).max() <= 1
    head = re.search(r"^\d+ detection\(s\) in .*$", _readme_table(), re.M).group(0)
    before, after = re.split(r"[0-9.]+ s\)", head)  # all but the time: the scan, the model, the alarm
    assert re.search(re.escape(before) + r"[0-9.]+ s\)" + re.escape(after) + "$", out, re.M), out
    answer = json.loads((checkout / "bag.json").read_text())
    assert_finds_the_bag(answer)
    assert f"wrote bag.png (256x256, {len(answer['detections'])} boxes)" in out
    picture = cv2.imread(str(checkout / "bag.png"))
    plain = pseudo_colour(read_scan(EXAMPLES / "bag_high.png"), read_scan(EXAMPLES / "bag_low.png"))
    assert picture.shape == (256, 256, 3)
    changed = np.abs(picture[..., ::-1].astype(int) - plain.astype(int)).max(axis=2) > 40
    assert 500 < changed.sum() < 0.5 * changed.size  # the boxes and labels, on the scan's own picture
    assert tdr_objects(checkout / "bag_tdr.dcm") == len(answer["detections"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quick_start_service(checkout: Path):
    port = _free_port()
    block = marked_blocks()[1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in block
    result = run_block(block, checkout, timeout=600, XSCREEN_PORT=str(port))
    answer = json.loads(result.stdout)  # the one thing the block prints: the /detect JSON
    assert_finds_the_bag(answer)
    served = cv2.imread(str(checkout / "bag_served.png"))
    assert served is not None and served.shape == (256, 256, 3)
    assert tdr_objects(checkout / "bag_served_tdr.dcm") == len(answer["detections"])
    assert "stopped by SIGTERM after finishing in-flight requests" in result.stderr  # `kill %1`


def test_unknown_flag_example_is_what_xscreen_prints(checkout: Path):
    lines = marked_blocks()[2].strip().splitlines()
    assert lines[0].startswith("$ xscreen ") and len(lines) == 2
    proc = subprocess.run(
        ["bash", "-c", lines[0][2:]],
        cwd=checkout,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == lines[1]


def _assert_same_scan(new: np.ndarray, shipped: np.ndarray, name: str) -> None:
    """The same 16-bit image up to one count in a few pixels: the synthetic scanner's physics runs numpy's
    vectorised exp/log, whose last bit differs between CPUs (AVX2, AVX-512), and a few pixels round the
    other way. Anything more is a changed generator."""
    assert new.dtype == shipped.dtype == np.uint16 and new.shape == shipped.shape, name
    diff = np.abs(new.astype(np.int32) - shipped.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"{name}: {(diff > 0).sum()} pixels differ"


def test_examples_come_from_the_recorded_synth_command(tmp_path: Path):
    """examples/README.md's `xscreen synth` line, run again, gives the shipped ground truth byte for byte,
    and PNG and DX files with the same pixels (up to a count of CPU rounding, ``_assert_same_scan``)."""
    text = (EXAMPLES / "README.md").read_text()
    command = re.search(r"^xscreen synth .*$", text, re.M).group(0)
    run_block(command + "\n", tmp_path, timeout=300)
    made = tmp_path / "bag"
    copies = re.findall(r"^cp bag/(\S+) examples/(\S+)$", text, re.M)
    assert {dst for _, dst in copies} == {p.name for p in EXAMPLES.iterdir()} - {"README.md"}
    for src, dst in copies:
        if dst.endswith(".dcm"):
            new, shipped = pydicom.dcmread(made / src), pydicom.dcmread(EXAMPLES / dst)
            _assert_same_scan(new.pixel_array, shipped.pixel_array, dst)
            assert new.ImageType == shipped.ImageType
        elif dst.endswith(".png"):
            read = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (made / src, EXAMPLES / dst)]
            _assert_same_scan(read[0], read[1], dst)
        else:
            assert (made / src).read_bytes() == (EXAMPLES / dst).read_bytes(), dst
