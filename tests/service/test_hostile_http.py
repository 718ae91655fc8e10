"""Decompression bombs against a real ``xscreen serve`` (issue #24 rows 1, 2, 4 and the new cases):
each is answered 4xx JSON in bounded time with bounded peak RSS growth, and the server serves on.

The bombs (tests/support/scan_bombs.py) are the ones tests/scans/test_scans_bounded.py gives the decoders;
here they go through multipart HTTP and the DICOS network, and the bound is the server's own VmHWM
(tests/support/hostile.py).
"""

from __future__ import annotations

import io
import os
import time
import zlib
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
import requests
import tifffile
from pynetdicom import AE

from tests.support.hostile import PeakRss
from tests.support.scan_bombs import SMALL, deflated_bomb, dx_file, dx_with_frame, patch_sof, rle_frame
from tests.support.scan_bombs import png_with_stream as png_stream
from tests.support.service_fixtures import API_KEY, ServiceProcess, free_port, post_scan
from xscreen.scans.dicos import files
from xscreen.service.dicos_listener import register_dicos_uids

# slow: decompression bombs against a real server, peak memory measured
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
GIB = 1 << 30


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    srv = ServiceProcess(
        tmp / "serve.log",
        weights=demo.weights,
        api_keys=API_KEY,
        device="cpu",
        score_threshold=demo.score_threshold,
        dicos_port=free_port(),
        dicos_allowed_aets="SCANNER",
        dicos_spool_dir=tmp / "spool",
        dicos_output_dir=tmp / "tdr",
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def low_half() -> bytes:
    return dx_file(SMALL, files.EXPLICIT_LE, energy="LOW")


def jpeg_bomb(syntax: str) -> bytes:
    if syntax == files.JPEG_LS_LOSSLESS:
        return dx_with_frame(
            syntax, patch_sof(imagecodecs.jpegls_encode(SMALL, level=0), b"\xff\xf7", 40000, 40000)
        )
    small = imagecodecs.jpeg8_encode(SMALL, lossless=True, predictor=1, bitspersample=16)
    return dx_with_frame(syntax, patch_sof(small, b"\xff\xc3", 40000, 40000))


def png_idat_bomb() -> bytes:
    """64 x 64 16-bit PNG whose IDAT stream inflates 1 GiB past the image."""
    img = np.full((64, 64), 30000, np.uint16)
    rows = np.hstack([np.zeros((64, 1), np.uint8), img.astype(">u2").view(np.uint8)]).tobytes()
    z = zlib.compressobj(9)
    parts = [z.compress(rows)] + [z.compress(bytes(1 << 24)) for _ in range(GIB >> 24)]
    return png_stream(img, b"".join(parts) + z.flush())


def tiff_tile_bomb() -> bytes:
    tile = 16384  # one 512 MiB tile declared for a 64 x 64 image
    z = zlib.compressobj(9)
    data = b"".join(z.compress(bytes(1 << 24)) for _ in range(tile * tile * 2 >> 24)) + z.flush()
    out = io.BytesIO()
    tifffile.imwrite(
        out, iter([data]), shape=(64, 64), dtype=np.uint16, compression="zlib", tile=(tile, tile)
    )
    return out.getvalue()


def rle_bomb() -> bytes:
    """An RLE frame whose first segment expands to 512 MiB (PackBits runs of 128 zeros)."""
    run = b"\x81\x00" * ((512 << 20) // 128)
    return dx_with_frame(files.RLE_LOSSLESS, rle_frame(run, b"\x81\x00" * 2))


BOMBS = {
    "jpeg-ls frame 40000x40000 in a 16x16 DX": (lambda: (jpeg_bomb(files.JPEG_LS_LOSSLESS), low_half()), 400),
    "jpeg lossless frame 40000x40000 in a 16x16 DX": (
        lambda: (jpeg_bomb(files.JPEG_LOSSLESS), low_half()),
        400,
    ),
    "rle segment expanding to 512 MiB": (lambda: (rle_bomb(), low_half()), 400),
    "deflated DX inflating to 512 MiB": (lambda: (deflated_bomb(512 << 20)[0], low_half()), 413),
    "png idat inflating 1 GiB extra": (lambda: (png_idat_bomb(), png_idat_bomb()), 400),
    "tiff tile of 512 MiB for 64x64": (lambda: (tiff_tile_bomb(), tiff_tile_bomb()), 400),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_quickly_with_bounded_memory(server, demo, name):
    build, status = BOMBS[name]
    high, low = build()
    assert len(high) < 10_000_000
    post_scan(server.url, *demo.scans[0].png())  # the allocator's first pass, unmeasured
    with PeakRss(server.proc.pid) as peak:
        t0 = time.monotonic()
        r = post_scan(server.url, high, low)
        elapsed = time.monotonic() - t0
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] in ("invalid_scan", "too_many_pixels")
    print(f"{name}: {r.status_code} {r.json()['error']} in {elapsed:.2f} s, peak +{peak.growth_mb:.1f} MB")
    assert elapsed < 5.0, f"answered after {elapsed:.1f} s"
    assert peak.growth_mb <= 300, f"peak RSS growth {peak.growth_mb:.0f} MB"
    assert post_scan(server.url, *demo.scans[0].png()).status_code == 200  # serves on


def test_too_many_multipart_fields_is_a_json_4xx(server):
    fields = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(5000)
    )
    body = fields + b"--b--\r\n"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=b"}
    with PeakRss(server.proc.pid) as peak:
        r = requests.post(server.url + "/detect", data=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json" and "error" in r.json()
    assert peak.growth_mb <= 100


def post_bag(url: str, views: list[tuple[bytes, bytes]]) -> requests.Response:
    parts = [
        (n, (f"{n}{i}.png", d, "image/png"))
        for i, v in enumerate(views)
        for n, d in zip(("high", "low"), v, strict=True)
    ]
    return requests.post(
        url + "/detect", files=parts, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )


def blank_png(side: int) -> bytes:
    """A 16-bit PNG of side x side pixels that compresses to a few tens of kB."""
    return cv2.imencode(".png", np.full((side, side), 30000, np.uint16))[1].tobytes()


def test_bag_of_many_huge_views_is_refused_from_the_headers(server):
    """8 views of 5000 x 5000 (the per-image limit each) declare 200 Mpx: over what one request may hold
    (the 100 Mpx budget), so 413 before any view is decoded, in bounded time and memory."""
    view = blank_png(5000)
    assert len(view) < 1_000_000
    with PeakRss(server.proc.pid) as peak:
        t0 = time.monotonic()
        r = post_bag(server.url, [(view, view)] * 8)
        elapsed = time.monotonic() - t0
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels", r.text
    assert "8 views hold 200000000 pixels" in r.json()["detail"]
    print(f"8 x 25 Mpx bag: 413 in {elapsed:.2f} s, peak +{peak.growth_mb:.1f} MB")
    assert elapsed < 5.0 and peak.growth_mb <= 200


def test_bag_of_a_thousand_views_is_refused_before_decoding(server):
    tiny = blank_png(8)
    with PeakRss(server.proc.pid) as peak:
        t0 = time.monotonic()
        r = post_bag(server.url, [(tiny, tiny)] * 490)  # 980 parts: under the multipart parser's limit
        elapsed = time.monotonic() - t0
    assert r.status_code == 422 and r.json()["error"] == "too_many_views", r.text
    print(f"490-view bag: 422 in {elapsed:.2f} s, peak +{peak.growth_mb:.1f} MB")
    assert elapsed < 5.0 and peak.growth_mb <= 100


def test_bomb_in_the_second_view_is_named_and_bounded(server, demo):
    good = demo.scans[0].png()
    with PeakRss(server.proc.pid) as peak:
        r = post_bag(server.url, [good, (png_idat_bomb(), png_idat_bomb())])
    assert r.status_code == 400 and r.json()["detail"].startswith("view 1: "), r.text
    assert peak.growth_mb <= 300
    assert post_bag(server.url, [good, good]).status_code == 200  # serves on


@pytest.mark.parametrize("syntax", [files.JPEG_LS_LOSSLESS, files.DEFLATED_LE])
def test_dicos_network_bomb_is_refused_with_bounded_memory(server, syntax, tmp_path):
    register_dicos_uids()
    bomb = jpeg_bomb(syntax) if syntax == files.JPEG_LS_LOSSLESS else deflated_bomb(512 << 20)[0]
    path = tmp_path / "bomb.dcm"  # sent from the file as it is: the SCU does not re-encode (or inflate) it
    path.write_bytes(bomb)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(files.DX_FOR_PROCESSING, syntax)
    cpu0 = cpu_seconds(server.proc.pid)
    with PeakRss(server.proc.pid) as peak:
        assoc = ae.associate("127.0.0.1", int(server.env["XSCREEN_DICOS_PORT"]), ae_title="XSCREEN")
        assert assoc.is_established
        t0 = time.monotonic()
        status = assoc.send_c_store(path)
        elapsed = time.monotonic() - t0
        if assoc.is_established:
            assoc.release()
    cpu = cpu_seconds(server.proc.pid) - cpu0
    code = getattr(status, "Status", None)
    print(
        f"DICOS {syntax}: status {code!r} in {elapsed:.2f} s (the SCU re-encodes the file: a deflated one is "
        f"inflated and deflated again), server CPU {cpu:.2f} s, peak +{peak.growth_mb:.1f} MB"
    )
    assert code is None or code != 0x0000, "a bomb is never acknowledged as stored"
    assert cpu < 5.0 and elapsed < 60 and peak.growth_mb <= 300
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
