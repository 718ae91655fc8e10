"""AP50 through the service, as a scanner client sees it: fresh synthetic scans POSTed to a real server.

    python benchmarks/detect_ap.py [--weights W] [--seed 7] [--images 40] [--size 640x640]
        [--overlap medium] [--thresholds 0.05] [--device auto] [--json OUT.json] [--keep DIR]

Makes ``--images`` test scans with ``xscreen synth`` (all in the test split, ``--seed``, default overlap),
starts ``xscreen serve`` on a free loopback port with ``--weights`` (default: the bundled demo weights),
posts each raw 16-bit pair to ``POST /detect`` once with no ``score_threshold`` (the model's own
threshold, from its weights file) and once per ``--thresholds`` value, and evaluates the answers with
pycocotools (training.evaluate) against the scans' ground truth. Prints one table row per threshold:
AP50 and mAP on all scans and on the challenging subset (scans with an object >= 50% covered).
The scans are written under a temporary folder (or ``--keep DIR``); a seed the model was not trained
on gives figures for unseen scans.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from xscreen.argtypes import non_negative_int, positive_int, size_pair
from xscreen.client import ApiError, Client
from xscreen.tables import markdown_table

XSCREEN = str(Path(sys.executable).with_name("xscreen"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def threshold_list(text: str) -> list[float]:
    """argparse type: comma-separated thresholds in [0, 1]."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.05,0.5, got {text!r}") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be in [0, 1], got {text!r}")
    return values


def synthesise(out: Path, images: int, seed: int, size: tuple[int, int], overlap: str) -> dict:
    """``xscreen synth`` into ``out`` (every scan in the test split) -> the test split's COCO dict."""
    cmd = [XSCREEN, "synth", "--out", str(out), "--images", str(images), "--seed", str(seed)]
    cmd += ["--size", f"{size[0]}x{size[1]}", "--overlap", overlap, "--splits", "0,0,1", "--no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "annotations" / "test.json").read_text())


class Server:
    """``xscreen serve`` on 127.0.0.1:<free port> with the given XSCREEN_* settings (no threshold set)."""

    def __init__(self, log_path: Path, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
        env.update({"XSCREEN_HOST": "127.0.0.1", "XSCREEN_PORT": str(self.port)})
        env.update({f"XSCREEN_{k.upper()}": v for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([XSCREEN, "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"xscreen serve exited:\n{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"xscreen serve not ready after {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def detect_all(url: str, data: Path, gt: dict, threshold: float | None) -> tuple[list[dict], float]:
    """POST every scan's raw pair; -> (COCO results with the ground truth's category ids, threshold used)."""
    from xscreen.model.classes import normalise_name

    cat_of = {normalise_name(c["name"]): int(c["id"]) for c in gt["categories"]}
    results, used = [], None
    with Client(url, timeout=600) as xs:
        for im in gt["images"]:
            try:
                answer = xs.detect(data / im["raw_high"], data / im["raw_low"], score_threshold=threshold)
            except ApiError as exc:
                raise RuntimeError(f"POST /detect answered {exc}") from None
            used = answer.score_threshold
            for d in answer.detections:
                b = d.box
                results.append(
                    {
                        "image_id": int(im["id"]),
                        "category_id": cat_of[normalise_name(d.class_name)],
                        "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                        "score": d.score,
                    }
                )
    return results, float(used)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def measure(args: argparse.Namespace, work: Path) -> dict:
    from xscreen.training.evaluate import evaluate_detections

    data = work / "scans"
    t0 = time.perf_counter()
    gt = synthesise(data, args.images, args.seed, args.size, args.overlap)
    synth_s = time.perf_counter() - t0
    server = Server(work / "serve.log", weights=str(args.weights), device=args.device, log_level="warning")
    rows = []
    try:
        server.wait_ready()
        for requested in (None, *args.thresholds):
            t0 = time.perf_counter()
            results, used = detect_all(server.url, data, gt, requested)
            seconds = time.perf_counter() - t0
            m = evaluate_detections(gt, results)
            hard = m.get("challenging")
            rows.append(
                {
                    "threshold": "model's own" if requested is None else "client",
                    "score_threshold": used,
                    "detections": len(results),
                    "AP50": m["AP50"],
                    "mAP": m["mAP"],
                    "challenging_AP50": hard["AP50"] if hard else None,
                    "challenging_mAP": hard["mAP"] if hard else None,
                    "challenging_images": hard["num_images"] if hard else 0,
                    "seconds": seconds,
                }
            )
    finally:
        server.stop()
    return {
        "weights": str(args.weights),
        "seed": args.seed,
        "images": len(gt["images"]),
        "objects": len(gt["annotations"]),
        "size": f"{args.size[0]}x{args.size[1]}",
        "overlap": args.overlap,
        "synth_seconds": synth_s,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from xscreen.inference.settings import bundled_weights_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--weights", type=Path, default=bundled_weights_path(), help="safetensors weights to serve"
    )
    p.add_argument("--seed", type=non_negative_int, default=7, help="xscreen synth seed (default 7)")
    p.add_argument("--images", type=positive_int, default=40, help="test scans (default 40)")
    p.add_argument("--size", type=size_pair(64, "WIDTHxHEIGHT such as 640x640"), default=(640, 640))
    p.add_argument(
        "--overlap", default="medium", help="xscreen synth --overlap (default medium, its default)"
    )
    p.add_argument(
        "--thresholds",
        type=threshold_list,
        default=[0.05],
        help="client score_threshold values besides the model's own (default 0.05)",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="server device")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", type=Path, help="write the scans and the server log here (kept)")
    args = p.parse_args(argv)
    if not args.weights.is_file():
        p.error(f"weights file not found: {args.weights}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            p.error(f"--keep {args.keep}: folder is not empty")
        report = measure(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="detect_ap_") as tmp:
            report = measure(args, Path(tmp))
    n_hard = report["rows"][0]["challenging_images"]
    print(
        f"\nAP through POST /detect: {report['images']} fresh `xscreen synth` test scans "
        f"({report['objects']} objects, {report['size']}, overlap {report['overlap']}, "
        f"seed {report['seed']}), "
        f"weights {args.weights.name}, device {args.device}; COCO AP in % (pycocotools)\n"
    )
    header = ("threshold", "score_threshold", "detections", "AP50", "mAP")
    header += (f"challenging AP50 ({n_hard} scans)", "challenging mAP", "seconds")
    cells = [
        [r["threshold"], f"{r['score_threshold']:g}", r["detections"], _pct(r["AP50"]), _pct(r["mAP"])]
        + [_pct(r["challenging_AP50"]), _pct(r["challenging_mAP"]), f"{r['seconds']:.1f}"]
        for r in report["rows"]
    ]
    print(markdown_table(header, cells, align="lrrrrrrr"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
