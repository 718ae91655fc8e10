"""DICOS files: DX pairs in every supported transfer syntax, every bad DX, the TDR round trip, TIFF
compressions, synthetic DICOS and ``xscreen detect`` on a DX pair (docs/dicos.md)."""

from __future__ import annotations

import io
import json
import subprocess

import cv2
import numpy as np
import pydicom
import pytest
import tifffile

from tests.support.dicos_cases import HIGH, LOW, assert_conformant, assert_tdr_matches, bad_dx_cases, edit
from tests.support.service_fixtures import XSCREEN, bundled_weights, synthetic_scans
from xscreen.scans import (
    ScanError,
    ScanSizeMismatchError,
    ScanTooLargeError,
    UnsupportedScanFormatError,
    read_scan,
    sniff_format,
)
from xscreen.scans.dicos import dx, files, tdr


@pytest.mark.parametrize("syntax", list(files.TRANSFER_SYNTAXES))
def test_dx_pair_round_trip_in_every_transfer_syntax(syntax):
    high, low = dx.write_dx_pair(HIGH, LOW, transfer_syntax=syntax)
    assert sniff_format(high) == "dicom" and files.is_dicom(low)
    assert pydicom.dcmread(io.BytesIO(high)).file_meta.TransferSyntaxUID == syntax
    pair = dx.read_dx_pair(low, high)  # given the wrong way round: Image Type orders them
    assert pair.high.energy == "HIGH" and pair.low.energy == "LOW"
    np.testing.assert_array_equal(pair.high.pixels, HIGH)
    np.testing.assert_array_equal(pair.low.pixels, LOW)
    assert pair.high.transfer_syntax == syntax
    assert pair.high.study_uid == pair.low.study_uid and pair.high.sop_class_uid == files.DX_FOR_PROCESSING


def test_jpeg_lossless_predictors():
    """.70 is selection value 1 (process 14 SV1); .57 is written with another predictor (6)."""
    for syntax, predictor in ((files.JPEG_LOSSLESS_SV1, 1), (files.JPEG_LOSSLESS, 6)):
        ds = pydicom.dcmread(io.BytesIO(dx.write_dx(HIGH, energy="HIGH", study_uid="1.2", series_uid="1.3",
                                                   transfer_syntax=syntax)))  # fmt: skip
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        assert b"\xff\xc3" in frame  # SOF3: lossless Huffman
        sos = frame.index(b"\xff\xda")
        n = frame[sos + 4]
        assert frame[sos + 5 + 2 * n] == predictor


def test_dx_without_preamble_reads_with_force():
    high, _ = dx.write_dx_pair(HIGH, LOW)
    ds = pydicom.dcmread(io.BytesIO(high))
    ds.preamble = None
    del ds.file_meta
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True)
    bare = out.getvalue()
    assert not files.is_dicom(bare)
    np.testing.assert_array_equal(dx.read_dx(bare, force=True).pixels, HIGH)


@pytest.mark.parametrize("case", list(bad_dx_cases()))
def test_bad_dx_is_one_clear_error(case):
    high, low, kind, text = bad_dx_cases()[case]
    with pytest.raises(kind, match=text) as info:
        dx.read_dx_pair(high, low, max_pixels=10_000_000)
    assert "\n" not in str(info.value)


def test_size_mismatch_within_one_study():
    high, low = dx.write_dx_pair(HIGH, LOW)
    study = pydicom.dcmread(io.BytesIO(high)).StudyInstanceUID
    small = edit(dx.write_dx_pair(HIGH[:20], LOW[:20])[1], StudyInstanceUID=study)
    with pytest.raises(ScanSizeMismatchError, match="56x40 pixels but low DX is 56x20"):
        dx.read_dx_pair(high, small)


def test_huge_dx_is_refused_before_decoding():
    """50000 x 50000 declared with a few bytes of pixels: the limit is checked from the header."""
    high, _ = dx.write_dx_pair(HIGH, LOW)
    with pytest.raises(ScanTooLargeError, match="2500000000 pixels"):
        dx.read_dx(edit(high, Rows=50000, Columns=50000), max_pixels=50_000_000)


def test_tdr_round_trip_with_pydicom():
    objects = [
        tdr.ThreatObject((10.5, 20.25, 40.0, 60.75), "knife", "cutter", 0.875),
        tdr.ThreatObject((1.0, 2.0, 3.0, 4.0), "spray cans", "liquid container", 0.3125),
    ]
    refs = [(files.DX_FOR_PROCESSING, "1.2.3.1"), (files.DX_FOR_PROCESSING, "1.2.3.2")]
    atr = tdr.AtrIdentity("xscreen-small-lacls", "1.0", "ab" * 32)
    buf = tdr.write_tdr(objects, atr=atr, references=refs, study_uid="1.2.3", scan_id="scan-1")
    report = tdr.read_tdr(buf)
    assert report.objects == objects  # exact: these values are representable in float32
    assert report.alarm == "ALARM" and report.tdr_type == "MACHINE"
    assert report.algorithm == ["xscreen-small-lacls", "1.0", "ab" * 32]
    assert report.references == refs and report.study_uid == "1.2.3" and report.scan_id == "scan-1"
    ds = pydicom.dcmread(io.BytesIO(buf))
    assert ds.SOPClassUID == files.TDR_SOP_CLASS and ds.Modality == "TDR"
    assert ds.file_meta[0x00020004].value == "V03"
    assert ds[0x40101075].VR == "FD" and ds.NumberOfTotalObjects == 2 == ds.NumberOfAlarmObjects
    pto = ds.ThreatSequence[0]
    assert [pto[t].VR for t in (0x40101080, 0x40101081, 0x40101082)] == ["DT", "DT", "FL"]
    assert pto.ATDAssessmentSequence[0].ThreatCategory == "PI"
    assert list(pto.PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIExtents) == [
        29.5,
        40.5,
        1.0,
    ]
    for key in ("IssuerOfPatientID", "InstitutionName", "InstitutionAddress", "DeviceSerialNumber",
                "SoftwareVersions", "DateOfLastCalibration", "TimeOfLastCalibration"):  # fmt: skip
        assert str(ds.get(key, "")).strip(), key
    clear_buf = tdr.write_tdr([], atr=atr, references=refs, study_uid="1.2.3")
    clear = tdr.read_tdr(clear_buf)
    assert clear.alarm == "CLEAR" and clear.objects == []
    assert_conformant(buf)
    assert_conformant(clear_buf)


@pytest.mark.parametrize("compression", ["opencv", "lzw", "zlib", "adobe_deflate", "packbits"])
def test_compressed_16bit_tiff_is_read(tmp_path, compression):
    if compression == "opencv":  # OpenCV writes .tiff with LZW by default
        path = tmp_path / "scan.tiff"
        assert cv2.imwrite(str(path), HIGH)
        buf = path.read_bytes()
        assert tifffile.TiffFile(io.BytesIO(buf)).pages[0].compression == 5
    else:
        out = io.BytesIO()
        tifffile.imwrite(out, HIGH, compression=compression)
        buf = out.getvalue()
    np.testing.assert_array_equal(read_scan(buf), HIGH)


def test_corrupt_lzw_tiff_is_still_a_decode_error():
    out = io.BytesIO()
    tifffile.imwrite(out, HIGH, compression="lzw")
    buf = bytearray(out.getvalue())
    page = tifffile.TiffFile(io.BytesIO(bytes(buf))).pages[0]
    start, n = page.dataoffsets[0], page.databytecounts[0]
    buf[start : start + n] = np.random.default_rng(1).integers(0, 255, n, dtype=np.uint8).tobytes()
    with pytest.raises(ScanError, match="truncated or corrupt TIFF"):
        read_scan(bytes(buf))


def test_synth_format_dicos(tmp_path):
    out = tmp_path / "synth"
    r = subprocess.run([XSCREEN, "synth", "--out", str(out), "--images", "2", "--size", "128x128",
                        "--format", "dicos", "--no-progress", "--splits", "1,0,0"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    coco = json.loads((out / "annotations" / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image in coco["images"]:
        pair = dx.read_dx_pair(
            (out / image["dicos_high"]).read_bytes(), (out / image["dicos_low"]).read_bytes()
        )
        np.testing.assert_array_equal(pair.high.pixels, cv2.imread(str(out / image["raw_high"]), -1))
        np.testing.assert_array_equal(pair.low.pixels, cv2.imread(str(out / image["raw_low"]), -1))
        report = tdr.read_tdr((out / image["dicos_tdr"]).read_bytes())
        assert report.tdr_type == "GROUND TRUTH" and report.references == pair.references()
        for key in ("dicos_high", "dicos_low", "dicos_tdr"):
            assert_conformant((out / image[key]).read_bytes())
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert [o.class_name for o in report.objects] == [names[a["category_id"]] for a in anns]
        for o, a in zip(report.objects, anns, strict=True):
            x, y, w, h = a["bbox"]
            assert o.box == pytest.approx((x, y, x + w, y + h)) and o.score == 1.0


@pytest.mark.slow  # xscreen synth and detect processes
def test_cli_detect_on_dx_pair_writes_tdr_equal_to_json(tmp_path):
    scan = synthetic_scans([3], 128)[0]
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=files.JPEG_LS_LOSSLESS)
    (tmp_path / "h.dcm").write_bytes(high)
    (tmp_path / "l.dcm").write_bytes(low)
    tdr_path = tmp_path / "out.dcm"
    h, lo = str(tmp_path / "h.dcm"), str(tmp_path / "l.dcm")
    r = subprocess.run([XSCREEN, "detect", "--high", lo, "--low", h, "--weights", str(bundled_weights()),
                        "--device", "cpu", "--score-threshold", "0.05", "--json", "--tdr", str(tdr_path)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    response = json.loads(r.stdout)
    report = tdr.read_tdr(tdr_path.read_bytes())
    assert_conformant(tdr_path.read_bytes())
    assert response["detections"], "the bundled model finds something at 0.05"
    assert_tdr_matches(report, response)
    assert report.references == dx.read_dx_pair(high, low).references()
    bad = subprocess.run(
        [XSCREEN, "detect", "--high", h, "--low", h], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "both DX images are HIGH ENERGY" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_read_scan_points_dicom_to_the_pair_reader():
    high, _ = dx.write_dx_pair(HIGH, LOW)
    with pytest.raises(UnsupportedScanFormatError, match="DICOS DX"):
        read_scan(high)
