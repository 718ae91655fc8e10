"""Peak server memory per scan: RSS growth of a real ``xscreen serve`` for one /detect and one /render.

Starts ``xscreen serve`` on a free loopback port (warm-up on, so the model's own buffers exist before the
first probe) and, for each scan size, posts an all-zero 16-bit PNG pair (the issue's probe: ~100 KB per
part at 5000 x 5000) once per route after one unmeasured request of that size. Before each probe the
server's VmHWM is reset (/proc/<pid>/clear_refs = 5); the growth is VmHWM after minus VmRSS before: the
most memory that one scan made the server hold at any moment. Divided by the scan's megapixels it is the
figure that XSCREEN_MAX_INFLIGHT_MPIXELS assumes (docs/service.md, "Memory budget and deadlines").

    python benchmarks/scan_memory.py [--sizes 1000,2500,5000] [--repeats 2] [--weights W]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import requests

from xscreen.argtypes import int_list, positive_int
from xscreen.client import ApiError, Client
from xscreen.tables import markdown_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@contextlib.contextmanager
def peak_growth_mb(pid: int) -> Iterator[list[float]]:
    """Yields a list that receives the peak RSS growth (MB) of ``pid`` during the block."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = _kb(pid, "VmRSS")
    out: list[float] = []
    yield out
    out.append((_kb(pid, "VmHWM") - start) / 1024.0)


@contextlib.contextmanager
def served(weights: Path, timeout_s: float = 180.0, **settings: object) -> Iterator[tuple[str, int]]:
    """A real ``xscreen serve`` on a free loopback port with XSCREEN_<settings>; yields (url, pid)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    env.update({f"XSCREEN_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(XSCREEN_HOST="127.0.0.1", XSCREEN_PORT=str(port), XSCREEN_WEIGHTS=str(weights))
    env.setdefault("XSCREEN_LOG_LEVEL", "warning")
    env.setdefault("OMP_NUM_THREADS", "2")
    xscreen = str(Path(sys.executable).with_name("xscreen"))
    proc = subprocess.Popen([xscreen, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"xscreen serve exited: {proc.stderr.read().decode(errors='replace')}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"server not ready after {timeout_s:g} s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def zero_pair(side: int) -> tuple[bytes, bytes]:
    png = cv2.imencode(".png", np.zeros((side, side), np.uint16))[1].tobytes()
    return png, png


def post(xs: Client, route: str, pair: tuple[bytes, bytes], side: int) -> None:
    """One scan to ``route`` (/detect or /render) through xscreen.client; RuntimeError unless answered 200."""
    try:
        (xs.detect if route == "/detect" else xs.render)(*pair)
    except ApiError as exc:
        raise RuntimeError(f"{route} {side}x{side}: {exc}") from None


def measure(url: str, pid: int, side: int, repeats: int) -> dict[str, float]:
    """Largest peak growth (MB) of one request per route at ``side`` x ``side`` over ``repeats`` probes."""
    pair = zero_pair(side)
    out: dict[str, float] = {}
    with Client(url, timeout=600) as xs:
        for route in ("/detect", "/render"):
            post(xs, route, pair, side)  # unmeasured: this size's first pass through the allocator
            peaks = []
            for _ in range(repeats):
                with peak_growth_mb(pid) as growth:
                    post(xs, route, pair, side)
                peaks.append(growth[0])
            out[route] = max(peaks)
    return out


def main(argv: list[str] | None = None) -> int:
    from xscreen.inference.settings import bundled_weights_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=bundled_weights_path())
    p.add_argument("--sizes", type=int_list(64), default="1000,2500,5000", help="comma list of scan sides")
    p.add_argument("--repeats", type=positive_int, default=2, help="probes per size and route (max kept)")
    args = p.parse_args(argv)
    if not args.weights.is_file():
        p.error(f"weights file not found: {args.weights} (give --weights)")
    largest = max(args.sizes) ** 2
    rows = []
    # one scan at a time, no budget wait: each probe holds the whole service for itself
    with served(args.weights, max_pixels=max(largest, 4), max_inflight_mpixels=largest / 1e6 + 1) as (
        url,
        pid,
    ):
        for side in args.sizes:
            peaks = measure(url, pid, side, args.repeats)
            mp = side * side / 1e6
            rows.append(
                [f"{side}x{side}", f"{mp:.2f}"]
                + [f"{peaks[r]:.0f}" for r in ("/detect", "/render")]
                + [f"{peaks[r] / mp:.1f}" for r in ("/detect", "/render")]
            )
    print(
        f"\nweights: {args.weights.name}, all-zero 16-bit PNG pairs, one request at a time, "
        f"max of {args.repeats} probes, {os.cpu_count()} cores\n"
    )
    header = ("scan", "megapixels", "/detect peak MB", "/render peak MB", "/detect MB/MP", "/render MB/MP")
    print(markdown_table(header, rows, align="lrrrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
