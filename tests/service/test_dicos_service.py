"""DICOS over HTTP on a real uvicorn server: DX pairs in every transfer syntax, TDR answers, bad DX -> 4xx."""

from __future__ import annotations

import pytest
import requests

from tests.support.dicos_cases import assert_conformant, assert_tdr_matches, bad_dx_cases
from tests.support.service_fixtures import InThreadServer, bundled_weights, synthetic_scans
from xscreen.scans.dicos import dx, files, tdr

pytestmark = pytest.mark.timeout(600)
THRESHOLD = 0.05  # low, so that the TDRs carry many of the bundled demo model's detections


@pytest.fixture(scope="module")
def server():
    with InThreadServer(
        weights=bundled_weights(), device="cpu", warmup=False, score_threshold=THRESHOLD, max_pixels=1_000_000
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def scan():
    return synthetic_scans([3], 128)[0]


def post(url, high: bytes, low: bytes, *, path="/detect", content_type="application/dicom", accept=None):
    files = {"high": ("high.dcm", high, content_type), "low": ("low.dcm", low, content_type)}
    headers = {"Accept": accept} if accept else {}
    return requests.post(url + path, files=files, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def png_answer(server, scan):
    high, low = scan.png()
    r = post(server.url, high, low, content_type="image/png")
    assert r.status_code == 200, r.text
    assert r.json()["detections"], "the bundled model finds something at 0.05"
    return r.json()


@pytest.mark.parametrize("syntax", list(files.TRANSFER_SYNTAXES))
def test_dx_pair_in_every_syntax_answers_as_the_png_pair(server, scan, png_answer, syntax):
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=syntax)
    # declared application/dicom for some, sniffed from the DICM preamble for the others
    content_type = (
        "application/dicom"
        if syntax in (files.EXPLICIT_LE, files.JPEG_LS_LOSSLESS)
        else "application/octet-stream"
    )
    r = post(server.url, low, high, content_type=content_type)  # swapped: Image Type orders them
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 128, "height": 128}
    assert body["detections"] == png_answer["detections"]


def test_accept_dicom_answers_a_tdr_equal_to_the_json(server, scan, png_answer):
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=files.JPEG_LOSSLESS_SV1)
    r = post(server.url, high, low, accept="application/dicom")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    report = tdr.read_tdr(r.content)
    assert_tdr_matches(report, png_answer)
    assert_conformant(r.content)
    assert report.references == dx.read_dx_pair(high, low).references()
    assert report.study_uid == dx.read_dx_pair(high, low).study_uid
    assert report.scan_id == r.headers["x-scan-id"]
    # JSON stays the default, and wins when both are equally acceptable
    both = post(server.url, high, low, accept="application/json, application/dicom")
    assert both.headers["content-type"] == "application/json"


def test_tdr_for_a_png_scan_references_generated_uids(server, scan, png_answer):
    high, low = scan.png()
    r = post(server.url, high, low, content_type="image/png", accept="application/dicom")
    assert r.status_code == 200
    report = tdr.read_tdr(r.content)
    assert_tdr_matches(report, png_answer)
    assert_conformant(r.content)
    assert len(report.references) == 2 and all(c == files.DX_FOR_PROCESSING for c, _ in report.references)


def test_render_accepts_a_dx_pair(server, scan):
    high, low = dx.write_dx_pair(scan.high, scan.low, transfer_syntax=files.RLE_LOSSLESS)
    r = post(server.url, high, low, path="/render")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


EXPECTED = {
    "ct": (400, "invalid_scan"),
    "tdr": (400, "invalid_scan"),
    "no pixel data": (400, "invalid_scan"),
    "8-bit": (400, "invalid_scan"),
    "signed": (400, "invalid_scan"),
    "two HIGH": (400, "invalid_scan"),
    "different studies": (400, "invalid_scan"),
    "unsupported syntax": (415, "unsupported_format"),
    "truncated": (400, "invalid_scan"),
    "huge": (413, "too_many_pixels"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_bad_dx_is_a_4xx_json_error(server, scan, case):
    high, low, _, text = bad_dx_cases()[case]
    r = post(server.url, high, low)
    status, code = EXPECTED[case]
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert text in r.json()["detail"]
    # nothing crashed: the next good pair is answered
    good = post(server.url, *dx.write_dx_pair(scan.high, scan.low))
    assert good.status_code == 200


def test_half_dx_half_png_is_refused(server, scan):
    high, _ = dx.write_dx_pair(scan.high, scan.low)
    r = post(server.url, high, scan.png()[1], content_type="application/octet-stream")
    assert r.status_code == 400 and "high is a DICOS file but low is not" in r.json()["detail"]
