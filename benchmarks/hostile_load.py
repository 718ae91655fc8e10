"""Valid-scan latency beside PNG decompression bombs: p50/p99 alone vs. next to N bomb senders.

Starts ``xscreen serve`` on a free loopback port with XSCREEN_REQUEST_TIMEOUT_S = --deadline and, for each
N in --bombs (0 first: the scan alone), runs N threads that keep posting a 16-bit 64 x 64 PNG pair whose
IDAT stream inflates --bomb-mib MiB past the image, while one client posts --requests
valid synthetic scans one after another (at most --time-limit seconds per level). It prints the valid
scans' p50 and p99 and their ratio to the run's own N = 0 level, and how the bombs were answered (the
deadline should answer each with 504 at about --deadline seconds, whatever the decoder does).

    python benchmarks/hostile_load.py [--bombs 0,2,6] [--requests 40] [--deadline 5] [--bomb-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from scan_memory import served

from xscreen.argtypes import int_at_least, int_list, positive_float, positive_int
from xscreen.client import ApiError, Client, TransportError
from xscreen.tables import markdown_table

_ADLER_MOD = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_idat_bomb(extra_mib: int, side: int = 64) -> bytes:
    """A valid 16-bit ``side`` x ``side`` greyscale PNG (all zero) whose IDAT zlib stream inflates
    ``extra_mib`` MiB of zeros past the image's own rows (~1 KB of file per MiB; built in milliseconds:
    one full-flushed deflate segment of 1 MiB repeated, and the Adler-32 of zeros computed directly)."""
    rows = bytes(side * (1 + 2 * side))  # filter byte 0 + 16-bit zeros per row
    c = zlib.compressobj(9)
    head = c.compress(rows) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    final_block = c.flush()[:-4]  # the empty last block; its Adler-32 is for one segment only
    length = len(rows) + extra_mib * (1 << 20)
    adler = ((length % _ADLER_MOD) << 16) | 1  # Adler-32 of `length` zero bytes: a = 1, b = length
    stream = head + segment * extra_mib + final_block + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def valid_pair(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    from xscreen.training.synth.scene import make_scan

    scan = make_scan(np.random.default_rng(seed), size, size)
    return cv2.imencode(".png", scan.high)[1].tobytes(), cv2.imencode(".png", scan.low)[1].tobytes()


def _post(url: str, pair: tuple[bytes, bytes], timeout: float) -> int:
    """POST /detect through xscreen.client: the HTTP status, 0 when no answer came (refused, timed out)."""
    try:
        with Client(url, timeout=timeout) as xs:  # one connection per scan, closed after it
            xs.detect(pair[0], pair[1])
    except ApiError as exc:
        return exc.status
    except TransportError:
        return 0
    return 200


def _bomb_sender(url: str, pair: tuple, stop: threading.Event, out: list, lock: threading.Lock, deadline):
    """Send ``pair`` (a bomb as both parts, or a valid scan for the control rows) until ``stop``."""
    while not stop.is_set():
        t0 = time.monotonic()
        status = _post(url, pair, deadline + 60)
        with lock:
            out.append((status, time.monotonic() - t0))


def run_level(url: str, n_bombs: int, valid: tuple, flood: tuple, args) -> dict:
    """Valid-scan latencies (s) and statuses with ``n_bombs`` senders of ``flood`` running beside them."""
    stop, lock, bombs = threading.Event(), threading.Lock(), []
    senders = [
        threading.Thread(
            target=_bomb_sender, args=(url, flood, stop, bombs, lock, args.deadline), daemon=True
        )
        for _ in range(n_bombs)
    ]
    for t in senders:
        t.start()
    if senders:
        time.sleep(1.0)  # the bombs are decoding before the first valid scan is sent
    lat, statuses = [], []
    end = time.monotonic() + args.time_limit
    while len(statuses) < args.requests and time.monotonic() < end:
        t0 = time.monotonic()
        status = _post(url, valid, args.deadline + 60)
        statuses.append(status)
        if status == 200:
            lat.append(time.monotonic() - t0)
    stop.set()
    for t in senders:
        t.join(args.deadline + 60)
    pct = (lambda q: float(np.percentile(lat, q))) if lat else (lambda q: float("nan"))
    return {
        "bombs": n_bombs,
        "sent": len(statuses),
        "ok": statuses.count(200),
        "p50": pct(50),
        "p99": pct(99),
        "bombs_sent": len(bombs),
        "bombs_504": sum(1 for s, _ in bombs if s == 504),
        "bomb_max_s": max((d for _, d in bombs), default=float("nan")),
    }


def _settle(url: str, valid: tuple, alone_p50: float, limit_s: float) -> None:
    """Wait (up to ``limit_s``) until decodes left over from the last level no longer slow a valid scan."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        t0 = time.monotonic()
        _post(url, valid, 120)
        if time.monotonic() - t0 <= 2 * alone_p50 + 0.05:
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    from xscreen.inference.settings import bundled_weights_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=bundled_weights_path())
    p.add_argument("--bombs", type=int_list(0), default="0,2,6", help="comma list of bomb senders (0 first)")
    p.add_argument("--requests", type=positive_int, default=40, help="valid scans per level (at most)")
    p.add_argument("--time-limit", type=positive_float, default=120.0, help="seconds per level (at most)")
    p.add_argument("--deadline", type=positive_float, default=5.0, help="XSCREEN_REQUEST_TIMEOUT_S")
    p.add_argument(
        "--bomb-mib", type=positive_int, default=1024, help="MiB each bomb inflates past its image"
    )
    p.add_argument("--size", type=int_at_least(64), default=512, help="side of the valid synthetic scans")
    p.add_argument("--decode-workers", type=positive_int, default=2, help="XSCREEN_DECODE_WORKERS")
    p.add_argument(
        "--control",
        action="store_true",
        help="also time the valid scans beside as many senders of small valid scans (ordinary flooding)",
    )
    args = p.parse_args(argv)
    if not args.weights.is_file():
        p.error(f"weights file not found: {args.weights} (give --weights)")
    levels = sorted(set(args.bombs) | {0})
    valid, bomb = valid_pair(args.size), png_idat_bomb(args.bomb_mib)
    small = valid_pair(64, seed=1)  # a valid scan of the bombs' declared size: the control rows' flood
    rows, control = [], []
    settings = {"request_timeout_s": args.deadline, "decode_workers": args.decode_workers}
    with served(args.weights, **settings) as (url, _pid):
        for _ in range(3):
            _post(url, valid, 120)  # warm the decode path, the HTTP path and the allocator
        for n in levels:
            if rows:
                _settle(url, valid, rows[0]["p50"], args.deadline + 60)
            rows.append(run_level(url, n, valid, (bomb, bomb), args))
            if args.control and n:
                _settle(url, valid, rows[0]["p50"], args.deadline + 60)
                control.append(run_level(url, n, valid, small, args))
    alone = rows[0]
    print(
        f"\nweights: {args.weights.name}; valid scans {args.size}x{args.size} 16-bit PNG, one client; bombs: "
        f"64x64 16-bit PNG pairs inflating {args.bomb_mib} MiB each ({len(bomb) / 1e6:.2f} MB); deadline "
        f"{args.deadline:g} s; decode_workers {args.decode_workers}; {os.cpu_count()} cores\n"
    )
    header = ("bomb senders", "valid sent", "valid 200", "valid p50 s", "valid p99 s", "p50 / alone")
    header += ("p99 / alone", "bombs answered", "bombs 504", "slowest bomb answer s")
    cells = [
        [r["bombs"], r["sent"], r["ok"], f"{r['p50']:.3f}", f"{r['p99']:.3f}"]
        + [f"{r['p50'] / alone['p50']:.2f}", f"{r['p99'] / alone['p99']:.2f}"]
        + [r["bombs_sent"], r["bombs_504"], f"{r['bomb_max_s']:.2f}" if r["bombs_sent"] else "-"]
        for r in rows
    ]
    print(markdown_table(header, cells, align="rrrrrrrrrr"))
    if control:
        print("\ncontrol: the same valid scans beside as many senders of valid 64x64 scans (no bombs)\n")
        header = ("valid 64x64 senders", "valid sent", "valid 200", "valid p50 s", "valid p99 s")
        header += ("p50 / alone", "p99 / alone", "flood answered")
        cells = [
            [r["bombs"], r["sent"], r["ok"], f"{r['p50']:.3f}", f"{r['p99']:.3f}"]
            + [f"{r['p50'] / alone['p50']:.2f}", f"{r['p99'] / alone['p99']:.2f}", r["bombs_sent"]]
            for r in control
        ]
        print(markdown_table(header, cells, align="rrrrrrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
