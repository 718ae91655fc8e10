"""The DICOS conformance check (xscreen.scans.dicos.conformance, ``xscreen dicos-check``): it flags a
removed, empty, too long or wrongly typed attribute, and passes every DX and TDR that xscreen writes
(the HTTP, listener, ``detect --tdr`` and ``synth`` TDRs are checked in their own tests)."""

from __future__ import annotations

import io
import subprocess

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support.dicos_cases import HIGH, LOW, assert_conformant
from tests.support.service_fixtures import XSCREEN
from xscreen.scans.dicos import conformance, dx, files, tdr

ATR = tdr.AtrIdentity("xscreen-small-lacls", "1.0", "ab" * 32)
REFS = [(files.DX_FOR_PROCESSING, "1.2.3.1"), (files.DX_FOR_PROCESSING, "1.2.3.2")]
ALARM = [tdr.ThreatObject((10.0, 20.0, 40.0, 60.0), "knife", "cutter", 0.875)]


def alarm_tdr() -> bytes:
    return tdr.write_tdr(ALARM, atr=ATR, references=REFS, study_uid="1.2.3", scan_id="scan-1")


def problems_of(buf: bytes) -> list[conformance.Problem]:
    return conformance.check(files.parse_dicom(buf, None, False))


def resave(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", list(files.TRANSFER_SYNTAXES))
def test_every_written_dx_is_conformant(syntax):
    for buf in dx.write_dx_pair(HIGH, LOW, transfer_syntax=syntax):
        assert_conformant(buf)


@pytest.mark.parametrize("tdr_type", ["MACHINE", "GROUND_TRUTH"])
@pytest.mark.parametrize("objects", [[], ALARM], ids=["clear", "alarm"])
def test_every_written_tdr_is_conformant(objects, tdr_type):
    buf = tdr.write_tdr(objects, atr=ATR, references=REFS, study_uid="1.2.3", tdr_type=tdr_type)
    assert_conformant(buf)
    ds = pydicom.dcmread(io.BytesIO(buf))
    assert ds.DICOSVersion == "V03" and ds.TDRType == tdr_type.replace("_", " ")
    assert ds.AbortFlag == "SUCCESS" and ds.AdditionalScreeningPerformed == "NO" and ds.OOIType == "BAGGAGE"
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in ds[0x00081110].value] == REFS


def test_long_algorithm_values_are_split_into_64_character_values():
    atr = tdr.AtrIdentity("n" * 70, "1.0", "ab" * 32)
    buf = tdr.write_tdr(ALARM, atr=atr, references=REFS, study_uid="1.2.3")
    assert_conformant(buf)
    assert list(pydicom.dcmread(io.BytesIO(buf)).ThreatDetectionAlgorithmAndVersion) == [
        "n" * 64, "n" * 6, "1.0", "ab" * 32
    ]  # fmt: skip


@pytest.mark.filterwarnings("ignore:The value length")
def test_a_padded_64_character_last_value_is_65_long_for_readers():
    """An odd-length (4010,1029) field ends in a pad space: write_tdr evens it on an earlier value, and
    the checker counts a 64-character last value plus its pad as 65, as pydicom does when reading."""
    atr = tdr.AtrIdentity("xscreen-small-lacls", "1.00", "ab" * 32)  # 19 + 4 + 64 + 2 separators: odd
    buf = tdr.write_tdr(ALARM, atr=atr, references=REFS, study_uid="1.2.3")
    assert_conformant(buf)
    assert tdr.read_tdr(buf).algorithm == ["xscreen-small-lacls", "1.00", "ab" * 32]
    ds = pydicom.dcmread(io.BytesIO(buf))
    ds.ThreatDetectionAlgorithmAndVersion = ["xscreen-small-lacls", "1.00", "ab" * 32]  # pydicom pads the end
    problems = problems_of(resave(ds))
    assert [(p.tag, p.why[:36]) for p in problems] == [
        ("(4010,1029)", "value length 65 exceeds 64 for VR LO")
    ]


def _removed(ds, tag):
    del ds[tag]


def _emptied(ds, tag):
    ds[tag].value = ""


def _nested_removed(ds, tag):
    del ds.ThreatSequence[0].PTORepresentationSequence[0][tag]


def _too_long(ds, tag):
    ds[tag].value = "x" * 66


def _wrong_vr(ds, tag):
    ds[tag].VR = "SH"


@pytest.mark.filterwarnings("ignore:The value length")  # pydicom's warning on setting the long value
@pytest.mark.parametrize(
    "damage, tag, why",
    [
        (_removed, 0x4010103A, "missing"),  # DICOS Version
        (_removed, 0x00081110, "missing (its condition holds)"),  # Referenced Scans, a TDR's 1C
        (_emptied, 0x00081010, "empty"),  # Machine ID
        (_emptied, 0x40101024, "empty"),  # Abort Flag
        (_nested_removed, 0x40101079, "missing"),  # Anomaly Locator Indicator Sequence
        (_too_long, 0x00081090, "value length 66 exceeds 64 for VR LO"),
        (_wrong_vr, 0x00100020, "VR is SH, the standard's is LO"),
    ],
    ids=["no-version", "no-referenced-scans", "empty-machine-id", "empty-abort-flag", "no-anomaly-locator",
         "long-model-name", "oid-as-sh"],
)  # fmt: skip
def test_damaged_tdr_is_flagged(damage, tag, why):
    ds = pydicom.dcmread(io.BytesIO(alarm_tdr()))
    damage(ds, tag)
    problems = problems_of(resave(ds))
    assert len(problems) == 1, problems
    assert problems[0].tag.endswith(f"({tag >> 16:04X},{tag & 0xFFFF:04X})") and why in problems[0].why


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_damaged_dx_and_bad_values_are_flagged():
    high, _ = dx.write_dx_pair(HIGH, LOW)
    ds = pydicom.dcmread(io.BytesIO(high))
    del ds.Rows
    ds.StationName = ""
    ds.TypeOfPatientID = "NAME"
    ds.FrameOfReferenceUID = "1.02.3"
    found = {(p.keyword, p.type, p.why.split(" (")[0].split(":")[0]) for p in problems_of(resave(ds))}
    assert ("Rows", "1", "missing") in found and ("StationName", "1", "empty") in found
    assert any(k == "TypeOfPatientID" and "not one of" in w for k, _, w in found)
    assert any(k == "FrameOfReferenceUID" and "not a valid UID" in w for k, _, w in found)


def test_not_a_dicos_object_is_one_problem():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert [p.keyword for p in conformance.check(ds)] == ["SOPClassUID"]


def test_dicos_check_command(tmp_path):
    good, bad = tmp_path / "good.dcm", tmp_path / "bad.dcm"
    good.write_bytes(alarm_tdr())
    ds = pydicom.dcmread(io.BytesIO(alarm_tdr()))
    del ds.AlarmDecisionTime
    bad.write_bytes(resave(ds))
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 300)

    def cli(*paths):
        return subprocess.run(
            [XSCREEN, "dicos-check", *map(str, paths)], capture_output=True, text=True, timeout=60
        )

    ok = cli(good)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: OK, a conformant DICOS TDR"
    r = cli(good, bad)
    assert r.returncode == 1
    assert (
        f"{bad}: 1 problem(s)" in r.stdout and "(4010,102B) AlarmDecisionTime (Type 1): missing" in r.stdout
    )
    for path, text in ((tmp_path / "none.dcm", "not a file"), (tmp_path / "junk.dcm", "not a DICOM file")):
        r = cli(path)
        assert r.returncode == 2 and text in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
