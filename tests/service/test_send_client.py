"""``xscreen send`` and ``xscreen.client`` against a real ``xscreen serve`` (uvicorn on loopback with the
DICOS listener): a DX pair sent over DICOS comes back as a TDR whose threats equal, box by box, the JSON
answer of the same pair over HTTP; the failures are one line and a non-zero exit; the client's errors
carry the API's code."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.dicos_cases import assert_conformant
from tests.support.service_fixtures import API_KEY, InThreadServer, free_port
from xscreen import client
from xscreen.cli import main
from xscreen.scans.dicos import dx, files, tdr

pytestmark = pytest.mark.timeout(600)
TDR_PORT = free_port()


@pytest.fixture(scope="module")
def server(demo):
    with InThreadServer(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        score_threshold=demo.score_threshold,
        api_keys=API_KEY,
        dicos_port=free_port(),
        dicos_allowed_aets="SCANNER",
        dicos_dest_ae_title="SENDER",
        dicos_dest_host="127.0.0.1",
        dicos_dest_port=TDR_PORT,
        dicos_retries=3,
        dicos_retry_backoff_s=0.2,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def dx_files(demo, tmp_path_factory):
    scan = demo.scans[0]
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=files.EXPLICIT_LE)
    folder = tmp_path_factory.mktemp("dx")
    (folder / "high.dcm").write_bytes(high)
    (folder / "low.dcm").write_bytes(low)
    return folder / "high.dcm", folder / "low.dcm"


def send_args(server, *extra: str) -> list[str]:
    return ["send", "--port", str(server.settings.dicos_port), "--calling-ae", "SCANNER", *extra]


def sender_lines(stderr: str) -> list[str]:
    """What ``xscreen send`` wrote to stderr: the in-process server's JSON log lines share the stream."""
    return [line for line in stderr.strip().splitlines() if not line.startswith('{"ts":')]


def test_send_round_trip_equals_http_answer(server, dx_files, tmp_path, capsys):
    high, low = dx_files
    out = tmp_path / "tdr.dcm"
    # the two files in the wrong order: Image Type orders them
    argv = send_args(server, str(low), str(high), "--tdr-port", str(TDR_PORT), "--out", str(out))
    assert main([*argv, "--timeout", "120"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert_conformant(out.read_bytes())  # the TDR the listener sent, as xscreen dicos-check sees it
    report = tdr.read_tdr(out.read_bytes())
    assert report.study_uid == dx.read_dx_pair(high.read_bytes(), low.read_bytes()).study_uid
    answer = client.Client(server.url, api_key=API_KEY).detect(high, low)
    assert answer.detections, "the demo weights find the demo scan's objects"
    assert report.alarm == "ALARM" and printed[1].startswith(f"ALARM: {len(answer.detections)} threat(s)")
    assert len(report.objects) == len(answer.detections) == len(printed) - 2
    for threat, det, line in zip(report.objects, answer.detections, printed[2:], strict=True):
        assert threat.class_name == det.class_name and line.startswith(f"  {det.class_name} ")
        assert threat.score == pytest.approx(det.score, abs=1e-6)
        b = det.box
        assert threat.box == pytest.approx((b.x1, b.y1, b.x2, b.y2), abs=1e-3)


def test_send_without_waiting_for_the_tdr(server, dx_files, capsys):
    high, low = dx_files
    assert main(send_args(server, "--high", str(high), "--low", str(low))) == 0
    assert capsys.readouterr().out.startswith("sent DX pair of study ")


def test_send_failures_are_one_line_and_non_zero(server, dx_files, tmp_path, capsys):
    high, low = dx_files
    assert main(["send", "--port", str(free_port()), str(high), str(low)]) == 1
    err = sender_lines(capsys.readouterr().err)
    assert len(err) == 1 and "cannot connect" in err[0]
    assert main(send_args(server, "--calling-ae", "INTRUDER", str(high), str(low))) == 1
    assert "association rejected" in capsys.readouterr().err
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a DICOS file")
    assert main(send_args(server, str(bad), str(low))) == 2
    assert "bad.dcm" in capsys.readouterr().err
    assert main(send_args(server, str(low), str(low))) == 2  # two LOWs are not a scan
    assert "one HIGH and one LOW" in capsys.readouterr().err


def test_send_times_out_waiting_for_a_tdr_sent_elsewhere(server, dx_files, capsys, demo):
    scan = demo.scans[1]  # a fresh study: the listener's TDR goes to TDR_PORT, not here
    high, low = dx.write_dx_pair(scan.high, scan.low)
    folder = dx_files[0].parent
    (folder / "h2.dcm").write_bytes(high)
    (folder / "l2.dcm").write_bytes(low)
    argv = send_args(server, str(folder / "h2.dcm"), str(folder / "l2.dcm"), "--tdr-port", str(free_port()))
    assert main([*argv, "--timeout", "1"]) == 1
    assert "no TDR received" in capsys.readouterr().err


def test_client_sync_and_async_agree(server, demo):
    high, low = demo.scans[0].png()
    sync = client.Client(server.url, api_key=API_KEY).detect(high, low, scan_id="c-1")
    answer = asyncio.run(
        client.AsyncClient(server.url, api_key=API_KEY).detect(high, low, score_threshold=0.5)
    )
    assert sync.scan_id == "c-1" and (sync.width, sync.height) == demo.scans[0].high.shape[::-1]
    assert answer.score_threshold == 0.5 and all(d.score >= 0.5 for d in answer.detections)
    assert [d.class_name for d in answer.detections] == [
        d.class_name for d in sync.detections if d.score >= 0.5
    ]


def test_client_errors(server, demo, tmp_path):
    high, low = demo.scans[0].png()
    with pytest.raises(client.ApiError) as caught:
        client.Client(server.url, api_key="wrong-key").detect(high, low)
    assert caught.value.status == 401 and caught.value.code == "unauthorized" and caught.value.detail
    with pytest.raises(client.ApiError) as caught:
        client.Client(server.url, api_key=API_KEY).detect(b"not an image", low)
    assert 400 <= caught.value.status < 500 and caught.value.code != "http_error"
    with pytest.raises(client.InputError, match="missing.png"):
        client.Client(server.url, api_key=API_KEY).detect(tmp_path / "missing.png", low)
    with pytest.raises(client.TransportError):
        client.Client(f"http://127.0.0.1:{free_port()}", timeout=5).detect(high, low)


def test_client_import_loads_neither_the_service_nor_the_model():
    import subprocess
    import sys

    code = (
        "import sys, xscreen.client; "
        "print(sorted(m for m in ('torch', 'fastapi', 'pydantic', 'xscreen.service') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_send_reports_a_cstore_failure_status(demo, tmp_path, capsys):
    """A listener whose spool cannot take a 2 MiB DX answers A700: the sender names the status."""
    import numpy as np

    high, low = (np.full((1024, 1024), v, np.uint16) for v in (40000, 30000))
    paths = [tmp_path / "high.dcm", tmp_path / "low.dcm"]
    for path, buf in zip(paths, dx.write_dx_pair(high, low), strict=True):
        path.write_bytes(buf)
    with InThreadServer(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        dicos_port=free_port(),
        dicos_spool_max_bytes=1024**2,
    ) as srv:
        assert main(["send", "--port", str(srv.settings.dicos_port), *map(str, paths)]) == 1
    err = sender_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].endswith("C-STORE of the first DX failed with status 0xa700"), err
