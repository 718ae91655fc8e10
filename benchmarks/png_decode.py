"""Where a 16-bit PNG scan's decoding time goes: the whole decode vs zlib inflating its image data.

Explains the service's PNG cost (docs/service.md, "Benchmark"): X-ray scans are noise-like, so their
PNGs barely compress and inflating them is most of the decode. For one synthetic scan per size it
prints the file size against the raw pixels, and the median time of ``training.scans.read_scan`` (the
service's reader, OpenCV underneath), of ``cv2.imdecode`` alone, and of ``zlib.decompress`` of the
concatenated IDAT chunks (no PNG reader built on zlib can be faster than that).

Two decoders the project does not depend on are timed too when they can be imported (otherwise their
columns read "-"), to show what a reader not built on zlib would gain: the Wuffs PNG decoder
(``pywuffs``, sdist only: needs a C++ compiler) and libdeflate's inflate of the same IDAT stream
(``imagecodecs.deflate_decode``). For example, without touching the project's environment:

    pip install --no-deps --target /tmp/fastpng pywuffs==2.0.1 imagecodecs
    PYTHONPATH=/tmp/fastpng python benchmarks/png_decode.py

    python benchmarks/png_decode.py [--sizes 640,1024] [--runs 30] [--compression 0..9]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import struct
import time
import zlib

import cv2
import numpy as np

from xscreen.argtypes import int_list, positive_int
from xscreen.tables import markdown_table


def idat(png: bytes) -> bytes:
    """The concatenated IDAT payloads of a PNG file (the zlib stream of its filtered rows)."""
    pos, out = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            out.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return b"".join(out)


def optional_decoders() -> dict:
    """name -> fn(png bytes, IDAT stream, raw row bytes) for the optional decoders that import here."""
    out = {}
    try:
        from pywuffs import ImageDecoderType, PixelFormat
        from pywuffs.aux import ImageDecoder, ImageDecoderConfig

        config = ImageDecoderConfig()
        config.enabled_decoders = [ImageDecoderType.PNG]
        config.pixel_format = PixelFormat.Y_16LE
        decoder = ImageDecoder(config)

        def wuffs(png: bytes, stream: bytes, size: int) -> np.ndarray:
            result = decoder.decode(png)
            if result.error_message:
                raise RuntimeError(result.error_message)
            pixels = result.pixbuf
            return pixels.view("<u2").reshape(pixels.shape[:2])

        out["wuffs"] = wuffs
    except ImportError:
        pass
    try:
        import imagecodecs

        out["libdeflate"] = lambda png, stream, size: imagecodecs.deflate_decode(stream, out=size)
    except (ImportError, AttributeError):
        pass
    return out


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    from xscreen.scans import read_scan
    from xscreen.training.synth.scene import make_scan

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int_list(2), default="640,1024", help="comma-separated square scan sides")
    p.add_argument("--runs", type=positive_int, default=30)
    p.add_argument("--compression", type=int, choices=range(10), metavar="0..9", help="PNG zlib level")
    args = p.parse_args(argv)
    sizes = args.sizes
    params = [] if args.compression is None else [cv2.IMWRITE_PNG_COMPRESSION, args.compression]
    level = "OpenCV default" if args.compression is None else str(args.compression)
    print(f"16-bit greyscale PNG of a synthetic high-energy image, zlib level: {level}\n")
    extra = optional_decoders()
    cells = []
    for side in sizes:
        scan = make_scan(np.random.default_rng(500), side, side)
        png = cv2.imencode(".png", scan.high, params)[1].tobytes()
        stream = idat(png)
        buf = np.frombuffer(png, np.uint8)
        t_read = median_ms(lambda png=png: read_scan(png, name="high"), args.runs)
        t_cv2 = median_ms(lambda buf=buf: cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), args.runs)
        rows = zlib.decompress(stream)
        t_zlib = median_ms(lambda stream=stream: zlib.decompress(stream), args.runs)
        optional = []
        for name, check in (("wuffs", scan.high.tobytes()), ("libdeflate", rows)):
            fn = extra.get(name)
            if fn is None:
                optional.append("-")
                continue
            got = fn(png, stream, len(rows))
            if np.asarray(got).tobytes() != check:  # the same pixels (Wuffs) / filtered rows (inflate)
                raise SystemExit(f"{name} decoded {side}x{side} differently from OpenCV/zlib")
            optional.append(f"{median_ms(functools.partial(fn, png, stream, len(rows)), args.runs):.2f}")
        raw = scan.high.nbytes
        cells.append(
            [f"{side}x{side}", raw, len(png), f"{len(png) / raw:.2f}", f"{t_read:.2f}", f"{t_cv2:.2f}"]
            + [f"{t_zlib:.2f}", *optional]
        )
    header = ("scan", "pixel bytes", "PNG bytes", "PNG / pixels", "read_scan ms", "cv2.imdecode ms")
    print(markdown_table((*header, "zlib inflate ms", "Wuffs decode ms", "libdeflate inflate ms"), cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
