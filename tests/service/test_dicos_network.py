"""The DICOS listener on loopback with real pynetdicom peers: a scanner SCU sends DX, a destination SCP
receives the TDR; refused AE titles, a missing second energy, the pending bound, a destination down."""

from __future__ import annotations

import io
import logging
import socket
import threading

import pydicom
import pynetdicom
import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.dicos_cases import assert_conformant
from tests.support.dicos_peers import Destination, store, wait_for
from tests.support.service_fixtures import (
    InThreadServer,
    bundled_weights,
    free_port,
    metric_value,
    synthetic_scans,
)
from xscreen.scans.dicos import dx, files, tdr
from xscreen.service.dicos_listener import register_dicos_uids

pytestmark = pytest.mark.timeout(600)
SCANNER = "SCANNER"


@pytest.fixture(scope="module")
def dest():
    destination = Destination(free_port()).start()
    yield destination
    destination.stop()


@pytest.fixture(scope="module")
def server(dest):
    with InThreadServer(
        weights=bundled_weights(),
        device="cpu",
        warmup=False,
        score_threshold=0.05,
        dicos_port=free_port(),
        dicos_allowed_aets=f"{SCANNER},OTHER",
        dicos_dest_ae_title="DEST",
        dicos_dest_host="127.0.0.1",
        dicos_dest_port=dest.port,
        dicos_pair_timeout_s=1.0,
        dicos_max_pending=2,
        dicos_retries=2,
        dicos_retry_backoff_s=0.05,
    ) as srv:
        yield srv


def metrics(server) -> str:
    return requests.get(server.url + "/metrics", timeout=10).text


def associate(server, calling: str = SCANNER, contexts=(files.DX_FOR_PROCESSING,)):
    register_dicos_uids()
    ae = AE(ae_title=calling)
    for uid in contexts:
        ae.add_requested_context(uid, files.EXPLICIT_LE)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", server.settings.dicos_port, ae_title="XSCREEN")


@pytest.mark.parametrize("context", [files.DICOS_APPLICATION_CONTEXT, files.DICOM_APPLICATION_CONTEXT])
def test_echo_under_dicos_and_dicom_application_contexts(server, monkeypatch, context):
    monkeypatch.setattr(pynetdicom.acse, "APPLICATION_CONTEXT_NAME", context)  # what the peer requests
    assoc = associate(server)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_pair_in_tdr_out(server, dest):
    scan = synthetic_scans([3], 128)[0]
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=files.EXPLICIT_LE)
    before = metric_value(metrics(server), "xscreen_dicos_tdr_sent_total", to="scp")
    assoc = associate(server)
    assert store(assoc, low) == 0 and store(assoc, high) == 0
    assoc.release()
    received = dest.received.get(timeout=120)
    report = tdr.read_tdr(received)
    assert_conformant(received)
    pair = dx.read_dx_pair(high, low)
    assert report.references == pair.references() and report.study_uid == pair.study_uid
    assert report.tdr_type == "MACHINE" and report.alarm == ("ALARM" if report.objects else "CLEAR")
    wait_for(lambda: metric_value(metrics(server), "xscreen_dicos_tdr_sent_total", to="scp") == before + 1)
    text = metrics(server)
    assert metric_value(text, "xscreen_dicos_paired_total") >= 1
    assert metric_value(text, "xscreen_dicos_latency_seconds_count") >= 1


def test_unknown_calling_ae_is_refused(server):
    assoc = associate(server, calling="INTRUDER")
    assert assoc.is_rejected and not assoc.is_established


def test_bad_halves_get_failure_statuses(server):
    scan = synthetic_scans([4], 128)[0]
    high, low = dx.write_dx_pair(scan.high, scan.low)
    ds = pydicom.dcmread(io.BytesIO(high))
    ds.PixelRepresentation = 1  # signed
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assoc = associate(server)
    assert store(assoc, out.getvalue()) == 0xA900
    assert store(assoc, high) == 0
    two_high = pydicom.dcmread(io.BytesIO(high))
    two_high.SOPInstanceUID = files.new_uid()
    out = io.BytesIO()
    two_high.save_as(out, enforce_file_format=True)
    assert store(assoc, out.getvalue()) == 0xC000  # a second HIGH for the study: refused, first keeps waiting
    assoc.release()
    ct = associate(
        server, contexts=(files.DICOS_CT_SOP_CLASS,)
    )  # a CT is not even given a presentation context
    assert ct.is_established and not [
        c for c in ct.accepted_contexts if c.abstract_syntax == files.DICOS_CT_SOP_CLASS
    ]
    ct.release()
    wait_for(lambda: metric_value(metrics(server), "xscreen_dicos_pending") == 0, timeout=10)  # timed out


def test_missing_second_energy_times_out_and_pending_is_bounded(server):
    wait_for(lambda: metric_value(metrics(server), "xscreen_dicos_pending") == 0, timeout=10)
    before = metric_value(metrics(server), "xscreen_dicos_timed_out_total")
    scan = synthetic_scans([5], 128)[0]
    halves = [dx.write_dx_pair(scan.high, scan.low)[0] for _ in range(3)]  # three studies, high only
    assoc = associate(server)
    assert [store(assoc, h) for h in halves] == [0, 0, 0xA700]  # dicos_max_pending = 2
    assoc.release()
    wait_for(lambda: metric_value(metrics(server), "xscreen_dicos_timed_out_total") == before + 2, timeout=10)
    assert metric_value(metrics(server), "xscreen_dicos_pending") == 0


def test_destination_down_is_retried_then_counted_and_logged(server, dest, caplog):
    dest.stop()
    try:
        scan = synthetic_scans([6], 128)[0]
        high, low = dx.write_dx_pair(scan.high, scan.low)
        before = metric_value(metrics(server), "xscreen_dicos_tdr_failed_total", reason="destination")
        with caplog.at_level(logging.WARNING, logger="xscreen.service.dicos"):
            assoc = associate(server)
            assert store(assoc, high) == 0 and store(assoc, low) == 0
            assoc.release()
            wait_for(
                lambda: (
                    metric_value(metrics(server), "xscreen_dicos_tdr_failed_total", reason="destination")
                    == before + 1
                )
            )
        attempts = [r for r in caplog.records if r.getMessage() == "DICOS: TDR C-STORE failed"]
        final = [r for r in caplog.records if r.getMessage() == "DICOS: TDR not delivered after retries"]
        assert len(attempts) == 3 and len(final) == 1  # 1 + dicos_retries
        assert final[0].scan_id and {r.scan_id for r in attempts} == {final[0].scan_id}
        assert final[0].study_uid == dx.read_dx_pair(high, low).study_uid
    finally:
        dest.start()


def test_stop_closes_the_port_and_joins_every_listener_thread(caplog):
    """Shutting the service down stops the DICOS server and its workers cleanly (no failed shutdown)."""
    port = free_port()
    before = set(threading.enumerate())  # the module's own server keeps its listener threads
    with (
        caplog.at_level("ERROR"),
        InThreadServer(
            weights=bundled_weights(), device="cpu", warmup=False, dicos_port=port, dicos_allowed_aets=SCANNER
        ),
    ):
        mine = [t for t in threading.enumerate() if t.name.startswith("xscreen-dicos-") and t not in before]
        assert len(mine) >= 3  # the workers, the sweeper and the association server
    assert [t.name for t in mine if t.is_alive()] == []
    assert "shutdown failed" not in caplog.text.lower(), caplog.text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
