"""The audit trail: every answered scan is on disk before its answer (SIGKILL mid-load loses none),
size rotation, and a full disk refuses scans (fail closed) with a counted, logged 503."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.service_fixtures import (
    API_KEY,
    InThreadServer,
    ServiceProcess,
    bundled_weights,
    easy_scans,
    metric_value,
    post_scan,
)
from xscreen.cli import main
from xscreen.service.audit import AuditError, AuditLog

pytestmark = pytest.mark.timeout(300)


def _records(path: Path) -> list[dict]:
    """Every record of the audit file and its rotated copies; a line that does not parse fails."""
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def _records_after_kill(path: Path) -> tuple[list[dict], bytes]:
    """The records, and the partial last line a kill inside a write may leave (b"" when none).

    Only the end of the newest file may be partial, and only with no newline after it."""
    data = path.read_bytes()
    whole, _, torn = data.rpartition(b"\n")
    rotated = [json.loads(line) for f in sorted(path.parent.glob(path.name + ".*"))
               for line in f.read_text().splitlines()]  # fmt: skip
    return rotated + [json.loads(line) for line in whole.decode().splitlines()], torn


@pytest.mark.slow  # a real server under load, killed and restarted
def test_every_answered_scan_survives_sigkill(tmp_path):
    audit = tmp_path / "audit" / "audit.jsonl"
    srv = ServiceProcess(
        tmp_path / "serve.log",
        weights=bundled_weights(),
        api_keys=API_KEY,
        audit_path=audit,
        device="cpu",
        score_threshold=0.05,
    ).start()
    srv.wait_ready()
    scans = easy_scans(3, 128)
    answered: dict[str, dict] = {}
    errors: list[str] = []

    def client(i: int) -> None:
        n = 0
        while True:
            n += 1
            rid = f"client{i}-req{n}"
            try:
                r = post_scan(srv.url, *scans[n % 3].png(), headers={"X-Request-ID": rid}, timeout=30)
            except requests.ConnectionError:
                return
            if r.status_code == 200:
                answered[r.json()["scan_id"]] = {**r.json(), "request_id": r.headers["x-request-id"]}
            else:
                errors.append(r.text)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120  # a loaded machine answers fewer scans a second: wait for them
    while len(answered) < 10 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    srv.proc.kill()  # SIGKILL, clients still sending
    srv.proc.wait(30)
    for t in threads:
        t.join(60)
    srv.stop()
    assert not errors and len(answered) >= 8, (len(answered), errors[:3])
    found, torn = _records_after_kill(audit)
    records = {r["scan_id"]: r for r in found}
    missing = set(answered) - set(records)
    assert not missing, f"{len(missing)} answered scans not in the audit file"
    kid = hashlib.sha256(API_KEY.encode()).hexdigest()[:12]
    assert API_KEY not in audit.read_text()
    for scan_id, resp in answered.items():
        rec = records[scan_id]
        assert rec["request_id"] == resp["request_id"] and rec["request_id"].startswith("client")
        assert rec["key_id"] == kid and rec["model"]["sha256"] == resp["model"]["sha256"]
        assert rec["detections"] == [
            {"class_name": d["class_name"], "class_id": d["class_id"], "group": d["group"],
             "score": d["score"], "box": [d["box"][k] for k in ("x1", "y1", "x2", "y2")]}
            for d in resp["detections"]
        ]  # fmt: skip
        assert rec["alarm"] == any(d["score"] >= 0.05 for d in resp["detections"])
        assert rec["score_threshold"] == 0.05 and 0 < rec["latency_s"] <= resp["timings"]["total"] + 0.5
        assert rec["time"].endswith("Z") and rec["route"] == "/detect"
    assert any(r["alarm"] for r in records.values())
    # the JSON log lines carry the request id too (the last one may be cut by the kill)
    log_lines = [x for x in srv.log().splitlines() if x.startswith("{")]
    lines = [json.loads(x) for x in log_lines[:-1]]
    with contextlib.suppress(json.JSONDecodeError):
        lines.append(json.loads(log_lines[-1]))
    some = next(iter(answered.values()))
    access = [e for e in lines if e.get("request_id") == some["request_id"] and e.get("msg") == "request"]
    assert len(access) == 1 and access[0]["key_id"] == kid and access[0]["scan_id"] == some["scan_id"]

    # restarted on the same file: a partial line the kill left is cut, and the file is whole lines again
    again = ServiceProcess(
        tmp_path / "serve2.log", weights=bundled_weights(), api_keys=API_KEY, audit_path=audit, device="cpu"
    ).start()
    try:
        again.wait_ready()
        r = post_scan(again.url, *scans[0].png(), headers={"X-Request-ID": "after-restart"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        again.stop()
    after = _records(audit)  # strict: every line parses
    assert [r["scan_id"] for r in after[: len(found)]] == [r["scan_id"] for r in found]
    assert len(after) == len(found) + 1 and after[-1]["request_id"] == "after-restart"
    cut = [json.loads(x) for x in again.log().splitlines() if "partial record" in x]
    assert [c["bytes_cut"] for c in cut] == ([len(torn)] if torn else []), (cut, len(torn))


def test_a_partial_last_line_is_cut_before_the_next_record(tmp_path):
    """A kill inside the writer's write leaves the start of a batch nobody was answered for; the next
    start cuts it, so the next record is not glued to it (and a whole file is left alone)."""
    path = tmp_path / "audit.jsonl"
    whole = b"".join(json.dumps({"scan_id": f"s{i}", "pad": "y" * 700}).encode() + b"\n" for i in range(100))
    path.write_bytes(whole + b'{"scan_id":"unanswered","detections":[{"class_na')
    log = AuditLog(path, max_bytes=10_000_000, keep=2)
    assert path.read_bytes() == whole  # cut at open, before any new record
    log.start()
    asyncio.run(log.append({"scan_id": "next"}))
    log.close()
    assert [r["scan_id"] for r in _records(path)] == [f"s{i}" for i in range(100)] + ["next"]
    # a file that ends in a newline, and one with no newline at all, are left whole / emptied
    AuditLog(path, max_bytes=10_000_000, keep=2).close()
    assert [r["scan_id"] for r in _records(path)][-1] == "next"
    lone = tmp_path / "lone.jsonl"
    lone.write_bytes(b'{"scan_id":"tor' + b"x" * 70_000)  # longer than one backward read
    AuditLog(lone, max_bytes=10_000_000, keep=2).close()
    assert lone.read_bytes() == b""


def test_a_partial_line_that_cannot_be_cut_is_ended_with_a_newline(tmp_path, monkeypatch, caplog):
    """An append-only file (chattr +a) refuses ftruncate with EPERM: the fragment then gets a line of its
    own, so the next record still parses, and the warning says which line to skip."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"scan_id":"s0"}\n{"scan_id":"unansw')

    def refuse(fd, length):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "ftruncate", refuse)
    with caplog.at_level("WARNING", logger="xscreen.service.audit"):
        log = AuditLog(path, max_bytes=10_000_000, keep=2)
    log.start()
    asyncio.run(log.append({"scan_id": "next"}))
    log.close()
    assert path.read_bytes() == b'{"scan_id":"s0"}\n{"scan_id":"unansw\n{"scan_id":"next"}\n'
    assert "cannot be cut (Operation not permitted)" in caplog.text


def test_rotation_keeps_n_files_of_whole_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=4096, keep=3)
    log.start()

    async def write() -> None:
        for i in range(200):
            await log.append({"scan_id": f"s{i:04d}", "pad": "x" * 60})

    asyncio.run(write())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    kept = [r["scan_id"] for f in ("audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
            for r in map(json.loads, (tmp_path / f).read_text().splitlines())]  # fmt: skip
    assert kept == [f"s{i:04d}" for i in range(200 - len(kept), 200)] and len(kept) > 100
    assert log.records_written == 200


def test_full_audit_disk_refuses_scans_counted_and_logged(caplog):
    scan = easy_scans(1, 128)[0]
    with InThreadServer(weights=bundled_weights(), device="cpu", audit_path="/dev/full") as srv:
        r = post_scan(srv.url, *scan.png(), key=None)
        assert r.status_code == 503 and r.json()["error"] == "audit_unavailable", r.text
        assert int(r.headers["retry-after"]) >= 1
        again = post_scan(srv.url, *scan.png(), key=None)
        assert again.status_code == 503
        metrics = requests.get(srv.url + "/metrics").text
        assert metric_value(metrics, "xscreen_audit_failures_total", reason="ENOSPC") == 2
        assert metric_value(metrics, "xscreen_audit_failures_total", reason="EROFS") == 0  # pre-initialised
        assert metric_value(metrics, "xscreen_audit_records_total") == 0
        assert requests.get(srv.url + "/healthz").status_code == 200
    refused = [rec for rec in caplog.records if rec.getMessage() == "audit record not written: scan refused"]
    assert len(refused) == 2 and "No space left on device" in refused[0].reason


def test_unopenable_audit_path_stops_start_up_with_one_line(tmp_path, capsys, monkeypatch):
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XSCREEN_AUDIT_PATH", str(blocker / "audit.jsonl"))
    monkeypatch.setenv("XSCREEN_DEVICE", "cpu")
    code = main(["serve"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith("xscreen serve: error: cannot open audit file")
        and "a-file/audit.jsonl: File exists" in err[0]
    )
    with pytest.raises(AuditError):
        AuditLog(blocker / "x.jsonl", 4096, 2)
