"""docs/integration.md's dcmtk recipe, run as written: stock ``storescu`` is refused for want of the DICOS
SOP classes; with the documented ``-xf dicos.cfg DICOS`` profile it sends a 2-view bag in one association
and the listener writes one conformant TDR referencing all four DX. CI installs Debian's dcmtk (.ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.dicos_cases import assert_conformant
from tests.support.service_fixtures import InThreadServer, free_port, synthetic_scans
from xscreen.scans.dicos import dx, files, tdr

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed: apt-get install dcmtk"),
]


def recipe() -> tuple[str, list[str]]:
    """The profile file and the storescu command lines of docs/integration.md, as documented."""
    text = (REPO / "docs" / "integration.md").read_text()
    cfg = re.search(r"```ini\n# dicos.cfg\n(.*?)```", text, re.S).group(1)
    commands = re.findall(r"^storescu .*$", text, re.M)
    return cfg, commands


def test_storescu_recipe_sends_a_bag_and_gets_one_tdr(demo, tmp_path):
    cfg, commands = recipe()
    (tmp_path / "dicos.cfg").write_text(cfg)
    study = files.new_uid()
    names = ["top_high.dcm", "top_low.dcm", "side_high.dcm", "side_low.dcm"]
    pairs = [dx.write_dx_pair(s.high, s.low, study_uid=study) for s in synthetic_scans([3, 4], 128)]
    for name, data in zip(names, [d for pair in pairs for d in pair], strict=True):
        (tmp_path / name).write_bytes(data)
    port, out = free_port(), tmp_path / "tdr"
    with InThreadServer(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        score_threshold=demo.score_threshold,
        dicos_port=port,
        dicos_allowed_aets="SCANNER",
        dicos_output_dir=out,
    ):

        def run(command: str) -> subprocess.CompletedProcess:
            argv = command.replace("11112", str(port)).split()
            return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)

        stock = run("storescu -aet SCANNER -aec XSCREEN 127.0.0.1 11112 top_high.dcm top_low.dcm")
        assert stock.returncode != 0 and "No Acceptable Presentation Contexts" in stock.stdout + stock.stderr
        bag_command = next(c for c in commands if "side_low.dcm" in c)
        sent = run(bag_command)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        end = time.monotonic() + 30
        while not list(out.glob("*.dcm")) and time.monotonic() < end:
            time.sleep(0.1)
    written = list(out.glob("*.dcm"))
    assert len(written) == 1  # one bag, one TDR
    assert_conformant(written[0].read_bytes())
    report = tdr.read_tdr(written[0].read_bytes())
    expected = [dx.read_dx_pair(h, lo) for h, lo in pairs]
    assert report.study_uid == study
    assert report.references == [ref for p in expected for ref in p.references()]
