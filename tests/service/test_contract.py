"""The API contract on a live server: Bearer schemes, declared errors with Retry-After, the error-code enum,
the OpenAPI document behind the key rule (its pages open), GET /model, request ids, misspelt XSCREEN_
variables."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import requests

from tests.support.service_fixtures import API_KEY, InThreadServer, bundled_weights, easy_scans, post_scan
from xscreen.service.errors import ErrorCode

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server():
    with InThreadServer(
        weights=bundled_weights(), device="cpu", api_keys=API_KEY, max_pixels=400_000, formats="png,raw"
    ) as srv:
        yield srv


def test_openapi_needs_a_key_when_keys_are_configured_and_its_pages_do_not(server):
    """The document is behind the scan key (XSCREEN_PROTECT_DOCS, on by default); /docs and /redoc are
    open pages that hold none of it and ask the browser's user for the key (test_docs_pages.py)."""
    r = requests.get(server.url + "/openapi.json", timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer wrong-key-0123456789"}
    assert requests.get(server.url + "/openapi.json", headers=wrong, timeout=30).status_code == 401
    assert requests.get(server.url + "/openapi.json", headers=AUTH, timeout=30).status_code == 200
    for path in ("/docs", "/redoc"):
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code == 200 and 'data-openapi-url="/openapi.json"' in r.text, path
    assert "swagger-ui-bundle.js" in requests.get(server.url + "/docs").text
    for path in ("/healthz", "/readyz"):
        assert requests.get(server.url + path).status_code == 200


def test_openapi_declares_bearer_security_errors_and_retry_after(server):
    doc = requests.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["AdminKey"]["type"] == "http" and schemes["AdminKey"]["scheme"] == "bearer"
    for path in ("/detect", "/render"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"ApiKey": []}], path
        for status in ("500", "503", "504"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, status)
        for status in ("503", "504"):
            header = op["responses"][status]["headers"]["Retry-After"]
            assert header["schema"]["type"] == "integer", (path, status)
        assert "Retry-After" not in op["responses"]["500"].get("headers", {})
    assert doc["paths"]["/model"]["get"]["security"] == [{"ApiKey": []}]
    assert doc["paths"]["/admin/model"]["post"]["security"] == [{"AdminKey": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    schemas = doc["components"]["schemas"]
    error = schemas["ErrorResponse"]["properties"]["error"]
    enum = schemas[error["$ref"].rsplit("/", 1)[1]]["enum"] if "$ref" in error else error["enum"]
    assert set(enum) == {c.value for c in ErrorCode} and "audit_unavailable" in enum and "queue_full" in enum


def test_every_error_code_the_service_uses_is_in_the_enum():
    codes: set[str] = set()
    pattern = re.compile(r'(?:ApiError|reject|ModelSwitchError|ConsoleError)\(\s*\d+,\s*"([a-z_]+)"')
    for path in (REPO / "service").rglob("*.py"):
        codes |= set(pattern.findall(path.read_text()))
    from xscreen.service import errors

    codes |= set(errors._CODES.values())
    assert len(codes) >= 25
    assert codes <= {c.value for c in ErrorCode}, sorted(codes - {c.value for c in ErrorCode})


def test_model_endpoint(server):
    assert requests.get(server.url + "/model", timeout=30).status_code == 401
    m = requests.get(server.url + "/model", headers=AUTH, timeout=30).json()
    names = m["config"]["class_names"]
    assert [c["class_name"] for c in m["classes"]] == names and len(names) == 12
    assert [c["class_id"] for c in m["classes"]] == list(range(1, 13))
    assert {c["group"] for c in m["classes"]} == {"cutter", "liquid container"}
    knife = next(c for c in m["classes"] if c["class_name"] == "knife")
    assert knife["group"] == "cutter"
    assert m["limits"]["max_pixels"] == 400_000 and m["limits"]["formats"] == ["png", "raw"]
    assert m["limits"]["max_upload_bytes"] == 64 * 1024 * 1024
    from xscreen.inference.settings import bundled_weights_path
    from xscreen.model.weights import operating_point_of, read_header

    own = operating_point_of(read_header(bundled_weights_path()), "bundled")["score_threshold"]
    # no XSCREEN_SCORE_THRESHOLD here: the default is the model's own operating threshold
    assert (m["backend"], m["device"], m["precision"], m["score_threshold"]) == ("torch", "cpu", "fp32", own)
    assert m["file"] == "xscreen-small-lacls.safetensors" and m["model_name"] is None
    assert m["config"]["depth"] == 18 and m["loaded_at"].endswith("Z")
    r = post_scan(server.url, *easy_scans(1, 128)[0].png())
    assert r.status_code == 200, r.text
    assert {k: m[k] for k in ("name", "version", "sha256")} == {
        k: r.json()["model"][k] for k in ("name", "version", "sha256")
    }


def test_request_ids_are_kept_replaced_or_made(server):
    scan = easy_scans(1, 128)[0]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    cases = [
        ({"X-Request-ID": "lane3-req-0001"}, "lane3-req-0001", None),
        ({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}, trace, trace),
        ({"X-Request-ID": "bad id\twith spaces", "traceparent": "00-zz-00-01"}, None, None),
        ({"X-Request-ID": "x" * 200, "traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}, None, None),
    ]
    for headers, want_id, want_trace in cases:
        for r in (
            post_scan(server.url, *scan.png(), headers=headers),
            requests.get(server.url + "/healthz", headers=headers),
            requests.get(server.url + "/nope", headers=headers),  # 404s carry them too
        ):
            rid, tp = r.headers["x-request-id"], r.headers["traceparent"]
            version, trace_id, span, flags = tp.split("-")
            assert version == "00" and len(span) == 16 and span != "00f067aa0ba902b7"
            if want_trace:
                assert trace_id == want_trace and flags == "01"
            else:
                assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
            if want_id:
                assert rid == want_id
            else:  # a bad or absent X-Request-ID is replaced by the trace id
                assert rid == trace_id


def test_misspelt_environment_variable_warns_with_the_closest_name(monkeypatch, caplog):
    from xscreen.service.settings import load_settings

    monkeypatch.setenv("XSCREEN_MODLE_NAME", "v2")
    monkeypatch.setenv("XSCREEN_AUDIT_PATHS", "/tmp/a")
    monkeypatch.setenv("XSCREEN_COMPLETELY_UNRELATED", "1")
    with caplog.at_level(logging.WARNING, logger="xscreen.service.settings"):
        load_settings()
    msgs = [r.getMessage() for r in caplog.records if r.name == "xscreen.service.settings"]
    assert any("XSCREEN_MODLE_NAME" in m and m.endswith("did you mean XSCREEN_MODEL_NAME?") for m in msgs), (
        msgs
    )
    assert any("XSCREEN_AUDIT_PATHS" in m and "XSCREEN_AUDIT_PATH?" in m for m in msgs), msgs
    unrelated = [m for m in msgs if "XSCREEN_COMPLETELY_UNRELATED" in m]
    assert len(unrelated) == 1 and "did you mean" not in unrelated[0]
    assert len(msgs) == 3
