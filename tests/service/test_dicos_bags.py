"""Multi-view bags over DICOS on loopback, real pynetdicom peers and real DX files: ``xscreen send`` of a
2-view bag to the listener gets one TDR that ``xscreen dicos-check`` accepts, referencing all four DX, with
the threats of the same bag over HTTP; bags complete on release, on XSCREEN_DICOS_BAG_VIEWS, after the
wait; a view missing an energy is rejected; too many views are refused; a spooled bag is recovered; the
bag is counted and audited once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
from pynetdicom import AE

from tests.support.dicos_cases import assert_conformant
from tests.support.dicos_peers import Destination, store, wait_for
from tests.support.service_fixtures import (
    API_KEY,
    XSCREEN,
    InThreadServer,
    free_port,
    metric_value,
    synthetic_scans,
)
from xscreen.cli import main
from xscreen.scans.dicos import dx, files, tdr
from xscreen.service.dicos_listener import register_dicos_uids
from xscreen.service.dicos_spool import Spool

pytestmark = pytest.mark.timeout(600)
SCANNER = "SCANNER"
WAIT_S = 2.0  # XSCREEN_DICOS_BAG_WAIT_S: long enough that a bag sent at once completes on its release
PAIR_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def dest():
    destination = Destination(free_port()).start()
    yield destination
    destination.stop()


def listener(demo, dest, spool: Path, **settings) -> InThreadServer:
    base = dict(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        score_threshold=demo.score_threshold,
        api_keys=API_KEY,
        max_views=2,
        dicos_port=free_port(),
        dicos_allowed_aets=SCANNER,
        dicos_dest_ae_title="SENDER",
        dicos_dest_host="127.0.0.1",
        dicos_dest_port=dest.port,
        dicos_retry_backoff_s=0.1,
        dicos_spool_dir=spool,
        dicos_pair_timeout_s=PAIR_TIMEOUT_S,
        dicos_bag_wait_s=WAIT_S,
    )
    return InThreadServer(**{**base, **settings})


@pytest.fixture(scope="module")
def server(demo, dest, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bags")
    with listener(demo, dest, tmp / "spool", audit_path=tmp / "audit.jsonl") as srv:
        srv.tmp = tmp
        yield srv


@pytest.fixture(scope="module")
def bag(demo) -> list[tuple[bytes, bytes]]:
    """A 2-view bag of the demo scans (a top and a side view, say): one study, a series per view."""
    study = files.new_uid()
    return [dx.write_dx_pair(s.high, s.low, study_uid=study) for s in demo.scans[:2]]


def small_bag(seed: int, views: int) -> list[tuple[bytes, bytes]]:
    study = files.new_uid()
    return [
        dx.write_dx_pair(s.high, s.low, study_uid=study)
        for s in synthetic_scans(range(seed, seed + views), 64)
    ]


def metrics(srv) -> str:
    return requests.get(srv.url + "/metrics", timeout=10).text


def completed(srv, rule: str) -> float:
    return metric_value(metrics(srv), "xscreen_dicos_bags_complete_total", rule=rule)


def associate(srv):
    register_dicos_uids()
    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(files.DX_FOR_PROCESSING, files.EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", srv.settings.dicos_port, ae_title="XSCREEN")
    assert assoc.is_established
    return assoc


def references(pairs) -> list[tuple[str, str]]:
    return [ref for high, low in pairs for ref in dx.read_dx_pair(high, low).references()]


def next_tdr(dest: Destination, timeout: float = 60) -> bytes:
    return dest.received.get(timeout=timeout)


def assert_no_tdr(dest: Destination) -> None:
    assert dest.received.empty(), "no TDR was expected"


def http_bag(srv, pairs) -> dict:
    """The JSON answer of POST /detect for the same DX, view by view (high0, low0, high1, low1)."""
    parts = [
        (name, (f"{name}{i}.dcm", data, "application/dicom"))
        for i, (high, low) in enumerate(pairs)
        for name, data in (("high", high), ("low", low))
    ]
    r = requests.post(
        srv.url + "/detect", files=parts, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_send_a_two_view_bag_gets_one_tdr_equal_to_the_http_answer(server, dest, bag, tmp_path, capsys):
    (h0, l0), (h1, l1) = bag
    paths = {}
    for name, data in {"h0": h0, "l0": l0, "h1": h1, "l1": l1}.items():
        paths[name] = tmp_path / f"{name}.dcm"
        paths[name].write_bytes(data)
    out = tmp_path / "tdr.dcm"
    before = metrics(server)
    dest.stop()  # xscreen send's own SCP takes the destination's port
    try:
        # the files in a mixed order: grouped by series, views in the order their series first appear
        argv = ["send", "--port", str(server.settings.dicos_port), "--calling-ae", SCANNER, "--out", str(out)]
        files_ = [str(paths[n]) for n in ("l0", "h1", "h0", "l1")]
        assert main([*argv, *files_, "--tdr-port", str(dest.port), "--timeout", "120"]) == 0
    finally:
        dest.start()
    printed = capsys.readouterr().out.splitlines()
    after = metrics(server)
    check = subprocess.run([XSCREEN, "dicos-check", str(out)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "OK, a conformant DICOS TDR" in check.stdout, check.stdout + check.stderr
    assert_conformant(out.read_bytes())
    report = tdr.read_tdr(out.read_bytes())
    assert report.references == references(bag)  # all four DX, view by view, high first
    assert report.study_uid == dx.read_dx(h0).study_uid

    answer = http_bag(server, bag)
    assert [v["source"]["series_uid"] for v in answer["views"]] == [dx.read_dx(h).series_uid for h, _ in bag]
    assert report.alarm == ("ALARM" if answer["alarm"] else "CLEAR") == "ALARM"
    for view in answer["views"]:
        objects = [o for o in report.objects if o.view == view["view"]]
        assert view["detections"], "the demo weights find each demo scan's objects"
        assert [o.class_name for o in objects] == [d["class_name"] for d in view["detections"]]
        for o, d in zip(objects, view["detections"], strict=True):
            assert o.box == pytest.approx(tuple(d["box"].values()), abs=1e-3)  # FL rounding only
            assert o.score == pytest.approx(d["score"], abs=1e-6)
    total = sum(len(v["detections"]) for v in answer["views"])
    assert printed[0].startswith(f"sent bag of 2 views (4 DX) of study {report.study_uid} to XSCREEN@")
    assert printed[1] == f"ALARM: {total} threat(s) in 2 views (scan {report.scan_id})"
    assert printed[2].startswith(f"  view 0 (series {dx.read_dx(h0).series_uid}): ")
    assert len(printed) == 2 + 2 + total  # a line per view, a line per threat

    # one bag: counted once, audited once (docs/service.md "Audit trail"), completed by its release
    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("xscreen_bags_total", source="dicos", alarm="true") == 1
    assert delta("xscreen_bag_views_total", source="dicos") == 2
    assert delta("xscreen_dicos_bags_complete_total", rule="release") == 1
    assert delta("xscreen_dicos_paired_total") == 2
    records = [json.loads(line) for line in (server.tmp / "audit.jsonl").read_text().splitlines()]
    (mine,) = [r for r in records if r["scan_id"] == report.scan_id]
    assert mine["route"] == "dicos" and mine["calling_ae"] == SCANNER and mine["alarm"] is True
    assert [v["source"]["high_instance_uid"] for v in mine["views"]] == [
        dx.read_dx(h).sop_instance_uid for h, _ in bag
    ]


def test_a_bag_sent_over_two_associations_completes_on_the_release_that_pairs_it(server, dest):
    (h0, l0), (h1, l1) = small_bag(100, 2)
    before = completed(server, "release")
    first = associate(server)
    assert [store(first, h0), store(first, h1)] == [0, 0]  # both views' HIGH
    first.release()  # every view still lacks its LOW: not complete
    second = associate(server)
    assert [store(second, l1), store(second, l0)] == [0, 0]
    second.release()
    report = tdr.read_tdr(next_tdr(dest))  # one TDR for the bag, none for the first association
    assert report.references == references([(h0, l0), (h1, l1)])
    assert completed(server, "release") == before + 1


def test_an_aborted_association_completes_nothing_and_a_resend_completes_on_release(server, dest):
    pairs = small_bag(105, 2)
    before = completed(server, "release")
    dropped = associate(server)
    assert [store(dropped, part) for pair in pairs for part in pair] == [0, 0, 0, 0]
    dropped.abort()  # the scanner did not see the end: it sends the bag again
    again = associate(server)
    assert [store(again, part) for pair in pairs for part in pair] == [0, 0, 0, 0]  # kept once
    again.release()
    report = tdr.read_tdr(next_tdr(dest))
    assert report.references == references(pairs)
    assert completed(server, "release") == before + 1


def test_an_open_association_gets_its_bag_detected_after_the_wait(server, dest):
    pairs = small_bag(110, 2)
    before = completed(server, "wait")
    assoc = associate(server)
    try:
        assert [store(assoc, part) for pair in pairs for part in pair] == [0, 0, 0, 0]
        report = tdr.read_tdr(next_tdr(dest))  # while the association is still open
        assert assoc.is_established
    finally:
        assoc.release()
    assert report.references == references(pairs)
    assert completed(server, "wait") == before + 1


def test_a_view_missing_an_energy_is_rejected_after_the_timeout(server, dest):
    (h0, l0), (h1, _) = small_bag(120, 2)
    before = metric_value(metrics(server), "xscreen_dicos_timed_out_total")
    assoc = associate(server)
    assert [store(assoc, h0), store(assoc, l0), store(assoc, h1)] == [0, 0, 0]
    assoc.release()
    wait_for(lambda: metric_value(metrics(server), "xscreen_dicos_timed_out_total") == before + 1, timeout=30)
    series = dx.read_dx(h1).series_uid
    reasons = [p.read_text() for p in (server.tmp / "spool" / "rejected").glob("*/reason.txt")]
    (reason,) = [r for r in reasons if series in r]
    assert reason.startswith(f"timeout: second energy not received within {PAIR_TIMEOUT_S:g} s")
    assert f"view 1 (series {series}): HIGH only" in reason
    assert_no_tdr(dest)


def test_more_views_than_max_views_are_refused(server, dest):
    pairs = small_bag(130, 3)  # XSCREEN_MAX_VIEWS = 2
    before = metric_value(metrics(server), "xscreen_dicos_received_total", result="too_many_views")
    assoc = associate(server)
    statuses = [store(assoc, part) for pair in pairs for part in pair]
    assoc.release()
    assert statuses == [0, 0, 0, 0, 0xC000, 0xC000]  # the third series, both of its energies
    assert (
        metric_value(metrics(server), "xscreen_dicos_received_total", result="too_many_views") == before + 2
    )
    report = tdr.read_tdr(next_tdr(dest))  # the first two views make the bag
    assert report.references == references(pairs[:2])


def test_a_third_dx_of_a_paired_view_is_refused(server, dest):
    ((high, low),) = small_bag(140, 1)
    third = dx.write_dx(
        dx.read_dx(low).pixels,
        energy="LOW",
        study_uid=dx.read_dx(low).study_uid,
        series_uid=dx.read_dx(low).series_uid,
    )
    assoc = associate(server)
    assert [store(assoc, high), store(assoc, low), store(assoc, third)] == [0, 0, 0xC000]
    assoc.release()
    next_tdr(dest)


def test_single_view_scanner_with_an_energy_per_series_pairs_as_before(server, dest):
    """A study's only two DX, one HIGH and one LOW in two series, are one view (docs/dicos.md "Bags")."""
    scan = synthetic_scans([150], 64)[0]
    study = files.new_uid()
    high = dx.write_dx(scan.high, energy="HIGH", study_uid=study, series_uid=files.new_uid())
    low = dx.write_dx(scan.low, energy="LOW", study_uid=study, series_uid=files.new_uid())
    assoc = associate(server)
    assert [store(assoc, low), store(assoc, high)] == [0, 0]
    assoc.release()
    report = tdr.read_tdr(next_tdr(dest))
    assert report.references == dx.read_dx_pair(high, low).references()


def spool_bag(spool: Path, pairs, skip: int | None = None) -> None:
    """Put a bag's DX into a (stopped) spool as C-STOREs would have, leaving out the DX at ``skip``."""
    import io

    import pydicom
    from pynetdicom.dsutils import encode

    folder = Spool(spool)
    try:
        for i, buf in enumerate(part for pair in pairs for part in pair):
            if i == skip:
                continue
            ds = pydicom.dcmread(io.BytesIO(buf))
            raw = encode(ds, False, True)
            folder.put_half(
                ds.StudyInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID, raw, files.EXPLICIT_LE, SCANNER
            )
    finally:
        folder.close()


def test_bag_views_setting_and_restart_recovery(demo, dest, tmp_path):
    """XSCREEN_DICOS_BAG_VIEWS=2: a spooled complete bag is detected at start; a spooled bag missing one
    LOW waits, and its LOW completes it at once, the association still open. (A bag of fewer views is
    rejected at the timeout: tests/service/test_dicos_bag_rules.py.)"""
    spool = tmp_path / "spool"
    complete, waiting = small_bag(160, 2), small_bag(170, 2)
    spool_bag(spool, complete)
    spool_bag(spool, waiting, skip=3)  # view 1's LOW
    assert_no_tdr(dest)
    settings = dict(dicos_bag_views=2, dicos_bag_wait_s=600, dicos_pair_timeout_s=600)
    with listener(demo, dest, spool, **settings) as srv:
        report = tdr.read_tdr(next_tdr(dest))
        assert report.references == references(complete)
        assert completed(srv, "recovered") == 1
        assoc = associate(srv)
        try:
            assert store(assoc, waiting[1][1]) == 0
            report = tdr.read_tdr(next_tdr(dest))  # before any release and long before the wait
        finally:
            assoc.release()
        assert report.references == references(waiting)
        assert completed(srv, "views") == 1


def test_send_refuses_a_bad_bag_before_connecting(tmp_path, capsys):
    (h0, l0), (h1, l1) = small_bag(190, 2)
    (oh, ol) = small_bag(200, 1)[0]  # another study
    paths = {}
    for name, data in {"h0": h0, "l0": l0, "h1": h1, "l1": l1, "oh": oh, "ol": ol}.items():
        paths[name] = str(tmp_path / f"{name}.dcm")
        Path(paths[name]).write_bytes(data)
    p = paths
    cases = {
        "2 --high and 1 --low": ["--high", p["h0"], "--low", p["l0"], "--high", p["h1"]],
        "not the views the listener would see": [
            "--high",
            p["h0"],
            "--low",
            p["l1"],
            "--high",
            p["h1"],
            "--low",
            p["l0"],
        ],
        f"view 1 (series {dx.read_dx(h1).series_uid}) has 1 DX file(s)": [p["h0"], p["l0"], p["h1"]],
        "the files belong to 2 studies": [p["h0"], p["l0"], p["oh"], p["ol"]],
        "not both": [p["h0"], "--high", p["h1"], "--low", p["l1"]],
    }
    for words, files_ in cases.items():
        assert main(["send", "--port", str(free_port()), *files_]) == 2, words
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("xscreen send: error: ") and words in err[0], (words, err)
