"""DICOS test data shared by tests/scans/test_dicos.py and tests/service/test_dicos_service.py: DX pixels,
edited and re-encoded DX files, every bad DX pair, the TDR-equals-JSON check and the conformance check."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest

from xscreen.scans import ScanError, ScanTooLargeError, UnsupportedScanFormatError
from xscreen.scans.dicos import conformance, dx, files, tdr

RNG = np.random.default_rng(7)
HIGH = RNG.integers(0, 65535, (40, 56)).astype(np.uint16)
LOW = RNG.integers(0, 65535, (40, 56)).astype(np.uint16)


def edit(buf: bytes, syntax: str | None = None, **changes) -> bytes:
    """``buf`` (a DICOM file) with attributes changed (None deletes) and re-saved."""
    ds = pydicom.dcmread(io.BytesIO(buf))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def jpeg2000(buf: bytes) -> bytes:
    """A DX re-encoded as JPEG 2000 Lossless (a syntax xscreen does not decode), with OpenJPEG."""
    import imagecodecs

    ds = pydicom.dcmread(io.BytesIO(buf))
    ds.PixelData = pydicom.encaps.encapsulate([imagecodecs.jpeg2k_encode(ds.pixel_array, level=0)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def bad_dx_cases() -> dict[str, tuple[bytes, bytes, type, str]]:
    """Bad DX pairs by name -> (high, low, the error read_dx_pair raises, words of its message)."""
    high, low = dx.write_dx_pair(HIGH, LOW)
    other_high, _ = dx.write_dx_pair(HIGH, LOW)
    tdr_file = tdr.write_tdr([], atr=tdr.AtrIdentity("m", "1", ""), references=[], study_uid="1.2.3")
    big = edit(high, Rows=50000, Columns=50000)
    return {
        "ct": (edit(high, SOPClassUID=files.DICOS_CT_SOP_CLASS, Modality="CT"), low, ScanError, "DICOS CT"),
        "tdr": (tdr_file, low, ScanError, "DICOS TDR"),
        "no pixel data": (edit(high, PixelData=None), low, ScanError, "no pixel data"),
        "8-bit": (edit(high, BitsAllocated=8, BitsStored=8, HighBit=7), low, ScanError, "8-bit unsigned"),
        "signed": (edit(high, PixelRepresentation=1), low, ScanError, "16-bit signed"),
        "two HIGH": (high, edit(low, ImageType=["ORIGINAL", "PRIMARY", "HIGH ENERGY"]), ScanError, "both"),
        "different studies": (other_high, low, ScanError, "different studies"),
        "unsupported syntax": (
            jpeg2000(high),
            low,
            UnsupportedScanFormatError,
            "JPEG 2000",
        ),  # fmt: skip
        "truncated": (high[:-500], low, ScanError, "truncated"),
        "huge": (big, low, ScanTooLargeError, "50000x50000"),
        "not dicom": (b"\x00" * 200, low, UnsupportedScanFormatError, "not a DICOM file"),
    }


def assert_tdr_matches(report: tdr.TdrReport, response: dict) -> None:
    """TDR objects == the JSON response's detections: boxes, classes, groups and scores (float32 exact)."""
    dets = response["detections"]
    assert len(report.objects) == len(dets)
    assert report.alarm == ("ALARM" if dets else "CLEAR")
    model = response["model"]
    assert report.algorithm == [model["name"], model["version"], model["sha256"]]
    for o, det in zip(report.objects, dets, strict=True):
        assert (o.class_name, o.group) == (det["class_name"], det["group"])
        box = [det["box"][k] for k in ("x1", "y1", "x2", "y2")]
        assert o.box == pytest.approx(box, abs=1e-3)
        assert o.score == pytest.approx(det["score"], abs=1e-6)


def assert_conformant(buf: bytes) -> None:
    """``buf`` passes the DICOS conformance check, and pydicom reads every element of it without a warning
    (such as "exceeds the maximum length")."""
    problems = conformance.check(files.parse_dicom(buf, None, False))
    assert problems == [], "\n".join(str(p) for p in problems)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pydicom.dcmread(io.BytesIO(buf))
        ds.walk(lambda dataset, elem: elem.value)  # converts every raw element, which is when pydicom warns
