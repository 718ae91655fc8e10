"""The DICOS listener never acknowledges what it will not deliver, and bounds what a peer may send: a real
``xscreen serve`` with real pynetdicom peers; a full queue, kill -9 and restart, over-size datasets/PDUs."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pynetdicom import AE

from tests.support.dicos_peers import Destination, store, wait_for
from tests.support.hostile import PeakRss
from tests.support.service_fixtures import (
    API_KEY,
    XSCREEN,
    ServiceProcess,
    bundled_weights,
    free_port,
    metric_value,
    post_scan,
    synthetic_scans,
)
from xscreen.scans.dicos import dx, files, tdr
from xscreen.service.dicos_listener import register_dicos_uids
from xscreen.service.dicos_spool import Spool, SpoolError

# slow: real servers started, killed and restarted per test
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
SCANNER = "SCANNER"
MAX_PIXELS = 1_000_000  # dataset limit 2 x 1e6 + 1 MiB = 3,048,576 bytes
ASSOCIATION_LIMIT = 4 * 1024 * 1024


def serve(tmp: Path, name: str, **settings) -> ServiceProcess:
    base = dict(
        weights=bundled_weights(),
        device="cpu",
        warmup="false",
        score_threshold=0.05,
        api_keys=API_KEY,
        dicos_port=free_port(),
        dicos_allowed_aets=SCANNER,
        dicos_retry_backoff_s=0.05,
        dicos_retry_max_backoff_s=1.0,
        max_pixels=MAX_PIXELS,
    )
    return ServiceProcess(tmp / f"{name}.log", **{**base, **settings}).start().wait_ready()


def dicos_port(srv: ServiceProcess) -> int:
    return int(srv.env["XSCREEN_DICOS_PORT"])


def associate(srv: ServiceProcess):
    register_dicos_uids()
    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(files.DX_FOR_PROCESSING, files.EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", dicos_port(srv), ae_title="XSCREEN")
    assert assoc.is_established
    return assoc


def send_pair(srv: ServiceProcess, high: bytes, low: bytes) -> list[int]:
    assoc = associate(srv)
    statuses = [store(assoc, high), store(assoc, low)]
    assoc.release()
    return statuses


def metric(srv: ServiceProcess, name: str, **labels) -> float:
    text = requests.get(srv.url + "/metrics", timeout=10).text
    return metric_value(text, name, **labels)


def received_tdrs(dest: Destination, count: int, timeout: float) -> list:
    reports, end = [], time.monotonic() + timeout
    while len(reports) < count and time.monotonic() < end:
        try:
            reports.append(tdr.read_tdr(dest.received.get(timeout=max(0.01, end - time.monotonic()))))
        except Exception:  # queue.Empty at the deadline
            break
    return reports


@pytest.fixture
def dest():
    destination = Destination(free_port()).start()
    yield destination
    destination.stop()


def http_load(url: str, stop: threading.Event, answers: list[int]) -> None:
    high, low = synthetic_scans([11], 256)[0].png()
    while not stop.is_set():
        try:
            answers.append(post_scan(url, high, low, timeout=30).status_code)
        except requests.RequestException:
            answers.append(0)


def test_full_queue_every_acknowledged_pair_gets_its_tdr(tmp_path, dest):
    """Row 7: queue of 1 with HTTP load beside it; 8 pairs acknowledged 0000 -> 8 TDRs within 60 s."""
    srv = serve(
        tmp_path, "queue", queue_size=1, max_batch_size=1, audit_path=tmp_path / "audit.jsonl",
        dicos_spool_dir=tmp_path / "spool", dicos_dest_ae_title="DEST", dicos_dest_host="127.0.0.1",
        dicos_dest_port=dest.port,
    )  # fmt: skip
    stop, answers = threading.Event(), []
    load = [threading.Thread(target=http_load, args=(srv.url, stop, answers)) for _ in range(6)]
    try:
        for t in load:
            t.start()
        time.sleep(1.0)
        pairs, statuses = [], []
        for scan in synthetic_scans(range(20, 28), 128):
            high, low = dx.write_dx_pair(scan.high, scan.low)
            pairs.append(dx.read_dx_pair(high, low))
            statuses.append(send_pair(srv, high, low))
        acknowledged = time.monotonic()
        time.sleep(5.0)  # the load goes on after the last acknowledgement
    finally:
        stop.set()
        for t in load:
            t.join()
    reports = received_tdrs(dest, len(pairs), timeout=60 - (time.monotonic() - acknowledged))
    took = time.monotonic() - acknowledged
    try:
        assert statuses == [[0, 0]] * 8
        assert 503 in answers, "the HTTP load did not fill the queue"
        assert metric(srv, "xscreen_dicos_retries_total", stage="detection") >= 1  # waited, not dropped
        print(f"8 TDRs in {took:.1f} s after the last acknowledgement; HTTP 503s: {answers.count(503)}")
        assert len(reports) == 8 and took <= 60
        assert sorted(r.study_uid for r in reports) == sorted(p.study_uid for p in pairs)
        by_study = {p.study_uid: p for p in pairs}
        assert all(r.references == by_study[r.study_uid].references() for r in reports)
        wait_for(
            lambda: not [p for p in (tmp_path / "spool").iterdir() if p.name not in ("rejected", ".lock")]
        )
        records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        dicos = [r for r in records if r["route"] == "dicos"]
        assert len(dicos) == 8 and {r["calling_ae"] for r in dicos} == {SCANNER}  # row 11
        assert {r["scan_id"] for r in dicos} == {r.scan_id for r in reports}
    finally:
        srv.stop()


def test_kill_9_after_the_acknowledgement_then_restart_delivers(tmp_path):
    """Both halves acknowledged, the destination down, kill -9; a restart on the same spool delivers the
    TDR. A first energy acknowledged before the kill is paired with its second after the restart."""
    port = free_port()
    spool = tmp_path / "spool"
    settings = dict(
        dicos_spool_dir=spool, dicos_dest_ae_title="DEST", dicos_dest_host="127.0.0.1", dicos_dest_port=port
    )
    first = serve(tmp_path, "first", **settings)
    pair_scan, half_scan = synthetic_scans([30, 31], 128)
    high, low = dx.write_dx_pair(pair_scan.high, pair_scan.low)
    lone_high, lone_low = dx.write_dx_pair(half_scan.high, half_scan.low)
    try:
        assert send_pair(first, high, low) == [0, 0]
        assoc = associate(first)
        assert store(assoc, lone_high) == 0
        assoc.release()
        first.proc.kill()  # SIGKILL: no shutdown code runs
        first.proc.wait()
    finally:
        first.stop()
    studies = [p for p in spool.iterdir() if p.is_dir() and p.name != "rejected"]
    assert len(studies) == 2  # the pair and the lone first energy, both on disk
    detected = any(p.name.startswith("tdr-") for study in studies for p in study.iterdir())
    print(f"killed {'after' if detected else 'before'} detection had spooled the TDR")
    bad_study = spool_bad_pair(spool)
    dest = Destination(port).start()
    try:
        second = serve(tmp_path, "second", **settings)
        try:
            reports = received_tdrs(dest, 1, timeout=60)
            assert len(reports) == 1 and reports[0].references == dx.read_dx_pair(high, low).references()
            assoc = associate(second)
            assert store(assoc, lone_low) == 0  # the second energy of the first spooled before the kill
            assoc.release()
            reports = received_tdrs(dest, 1, timeout=60)
            assert (
                len(reports) == 1 and reports[0].study_uid == dx.read_dx_pair(lone_high, lone_low).study_uid
            )
            assert received_tdrs(dest, 1, timeout=2) == []  # exactly one TDR each, none for the bad pair
            (reason,) = [
                r.read_text() for r in (spool / "rejected").glob("*/reason.txt") if bad_study in r.parent.name
            ]
            assert reason.startswith("scan: ") and "truncated DX" in reason, reason
            assert metric(second, "xscreen_dicos_rejected_total", reason="scan") == 1
        finally:
            second.stop()
    finally:
        dest.stop()


def spool_bad_pair(spool: Path) -> str:
    """Put a pair whose high energy's pixels are short of Rows x Columns into a (stopped) spool, as a
    C-STORE would have; returns the name of its study folder."""
    from pynetdicom.dsutils import encode

    scan = synthetic_scans([32], 128)[0]
    high, low = (pydicom.dcmread(io.BytesIO(b)) for b in dx.write_dx_pair(scan.high, scan.low))
    high.Rows = 200  # 128 x 128 pixels stored
    folder = Spool(spool)
    try:
        for ds in (high, low):
            raw = encode(ds, False, True)
            folder.put_half(
                ds.StudyInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID, raw, files.EXPLICIT_LE, SCANNER
            )
        return folder.study_dir(high.StudyInstanceUID).name
    finally:
        folder.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    srv = serve(
        tmp, "limits", dicos_spool_dir=tmp / "spool", dicos_output_dir=tmp / "tdr",
        dicos_max_association_bytes=ASSOCIATION_LIMIT, dicos_pair_timeout_s=2,
    )  # fmt: skip
    yield srv, tmp
    srv.stop()


def with_private_element(dx: bytes, size: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(io.BytesIO(dx))
    ds.add_new((0x0009, 0x0010), "LO", "XSCREEN TEST")
    ds.add_new((0x0009, 0x1000), "OB", bytes(size))
    return ds


def test_300_mib_dataset_is_refused_with_bounded_memory(limited):
    """Row 6: a 16x16 DX carrying a 300 MiB private element: association aborted, server RSS +<= 200 MB."""
    srv, _ = limited
    scan = synthetic_scans([40], 16)[0]
    ds = with_private_element(dx.write_dx_pair(scan.high, scan.low)[0], 300 * 1024 * 1024)
    before = metric(srv, "xscreen_dicos_aborted_total", reason="dataset_bytes")
    assoc = associate(srv)
    with PeakRss(srv.proc.pid) as peak:
        t0 = time.monotonic()
        status = assoc.send_c_store(ds)
        took = time.monotonic() - t0
    del ds
    print(f"300 MiB dataset: peak RSS growth {peak.growth_mb:.1f} MB, refused in {took:.2f} s")
    assert "Status" not in status  # no C-STORE response: the listener cut the association
    # pynetdicom's requestor thread marks the association aborted just after send_c_store returns
    wait_for(lambda: assoc.is_aborted, timeout=5)
    assert peak.growth_mb <= 200
    assert metric(srv, "xscreen_dicos_aborted_total", reason="dataset_bytes") == before + 1
    good = synthetic_scans([41], 64)[0]
    assert send_pair(srv, *dx.write_dx_pair(good.high, good.low)) == [0, 0]  # the listener keeps serving


def test_association_byte_limit_aborts_and_acknowledged_pairs_are_delivered(limited):
    srv, tmp = limited
    scans = synthetic_scans(range(50, 56), 512)
    halves = [h for s in scans for h in dx.write_dx_pair(s.high, s.low)]
    fits = ASSOCIATION_LIMIT // len(halves[0])  # whole datasets within the limit (plus command sets)
    before_aborted = metric(srv, "xscreen_dicos_aborted_total", reason="association_bytes")
    before_sent = metric(srv, "xscreen_dicos_tdr_sent_total", to="folder")
    assoc = associate(srv)
    statuses = []
    for h in halves:
        status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(h)))
        statuses.append(int(status.Status) if "Status" in status else None)
        if statuses[-1] is None:
            break
    assert statuses[: fits - 1] == [0] * (fits - 1) and statuses[-1] is None and len(statuses) <= fits + 1
    assert metric(srv, "xscreen_dicos_aborted_total", reason="association_bytes") == before_aborted + 1
    complete = statuses.count(0) // 2
    wait_for(lambda: metric(srv, "xscreen_dicos_tdr_sent_total", to="folder") == before_sent + complete)
    assert len(list((tmp / "tdr").glob("*.dcm"))) >= complete


def test_pdu_announcing_300_mib_is_not_read(limited):
    """A peer ignoring the maximum PDU length: the connection is closed at the PDU header."""
    srv, _ = limited
    before = metric(srv, "xscreen_dicos_aborted_total", reason="pdu_bytes")
    chunk = np.zeros(1024 * 1024, np.uint8).tobytes()
    with PeakRss(srv.proc.pid) as peak, socket.create_connection(("127.0.0.1", dicos_port(srv))) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 300 * 1024 * 1024))  # an A-ASSOCIATE-RQ of 300 MiB
        sent, closed = 0, False
        sock.settimeout(10)
        try:
            while sent < 300 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            closed = True
        if not closed:
            closed = sock.recv(1) == b""
    print(f"300 MiB PDU: closed after {sent / 2**20:.0f} MiB sent, peak RSS growth {peak.growth_mb:.1f} MB")
    assert closed and sent < 300 * 1024 * 1024
    assert peak.growth_mb <= 50
    assert metric(srv, "xscreen_dicos_aborted_total", reason="pdu_bytes") == before + 1


def test_lone_first_energy_moves_to_rejected_and_a_resend_is_kept_once(limited):
    srv, tmp = limited
    scan = synthetic_scans([60], 64)[0]
    high, _ = dx.write_dx_pair(scan.high, scan.low)
    before = metric(srv, "xscreen_dicos_received_total", result="duplicate")
    assoc = associate(srv)
    assert [store(assoc, high), store(assoc, high)] == [0, 0]  # the same SOP instance again: kept once
    assoc.release()
    assert metric(srv, "xscreen_dicos_received_total", result="duplicate") == before + 1
    study = dx.read_dx(high).study_uid

    def moved() -> list[Path]:  # rejected/ folders holding this study's image
        return [
            half.parent
            for half in (tmp / "spool" / "rejected").glob("*/*.dcm")
            if pydicom.dcmread(half, stop_before_pixels=True).StudyInstanceUID == study
        ]

    wait_for(lambda: bool(moved()), timeout=20)  # dicos_pair_timeout_s = 2
    (folder,) = moved()
    assert (folder / "reason.txt").read_text().startswith("timeout: second energy not received within 2 s")
    assert len(list(folder.glob("*.dcm"))) == 1  # the resend did not make a second copy


def test_a_pair_whose_pixels_contradict_image_type_is_rejected_not_answered(limited):
    """docs/method.md 1a on the network: the file labelled HIGH ENERGY holds the darker pixels."""
    srv, tmp = limited
    scan = synthetic_scans([61], 128)[0]
    wrong = dx.write_dx_pair(scan.low, scan.high)  # Image Type says HIGH on the low-energy pixels
    study = dx.read_dx(wrong[0]).study_uid
    assert send_pair(srv, *wrong) == [0, 0]  # both halves are on disk before the answer

    def moved() -> list[Path]:
        return [
            half.parent
            for half in (tmp / "spool" / "rejected").glob("*/*.dcm")
            if pydicom.dcmread(half, stop_before_pixels=True).StudyInstanceUID == study
        ]

    wait_for(lambda: bool(moved()), timeout=30)
    (folder,) = set(moved())
    reason = (folder / "reason.txt").read_text()
    assert reason.startswith("scan: ") and "Image Type (0008,0008) labels HIGH and LOW" in reason
    assert len(list(folder.glob("*.dcm"))) == 2
    written = [tdr.read_tdr(p.read_bytes()) for p in (tmp / "tdr").glob("*.dcm")]
    assert study not in [r.study_uid for r in written], "no TDR for the rejected pair"


def test_a_spool_folder_serves_one_process(tmp_path):
    first = Spool(tmp_path / "spool")
    try:
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(tmp_path / "spool")
    finally:
        first.close()
    Spool(tmp_path / "spool").close()  # free again once the first is closed


def test_a_second_server_on_a_spool_in_use_stops_with_one_line(tmp_path):
    first = serve(tmp_path, "first", dicos_spool_dir=tmp_path / "spool")
    try:
        env = {**first.env, "XSCREEN_PORT": str(free_port()), "XSCREEN_DICOS_PORT": str(free_port())}
        r = subprocess.run([XSCREEN, "serve"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if "in use by another process" in line]
        assert len(errors) == 1 and str(tmp_path / "spool") in errors[0]
        assert requests.get(first.url + "/readyz", timeout=10).status_code == 200  # the first serves on
    finally:
        first.stop()


def test_concurrent_associations_each_get_their_tdr(limited):
    """Four scanners at once (spool writes run outside the listener's lock): every pair is delivered."""
    srv, tmp = limited
    pairs = [dx.write_dx_pair(s.high, s.low) for s in synthetic_scans(range(70, 74), 256)]
    before = metric(srv, "xscreen_dicos_tdr_sent_total", to="folder")
    statuses: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda i=i, p=p: statuses.__setitem__(i, send_pair(srv, *p)))
        for i, p in enumerate(pairs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [statuses[i] for i in range(4)] == [[0, 0]] * 4
    wait_for(lambda: metric(srv, "xscreen_dicos_tdr_sent_total", to="folder") == before + 4)
    studies = {dx.read_dx_pair(*p).study_uid for p in pairs}
    written = {tdr.read_tdr((tmp / "tdr" / f).read_bytes()).study_uid for f in os.listdir(tmp / "tdr")}
    assert studies <= written
