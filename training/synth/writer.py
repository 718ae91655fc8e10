"""Write a synthetic dataset: raw 16-bit pairs, converted images, COCO json per split (contract layout).

Layout (shared contract)::

    DIR/annotations/{train,val,test}.json   COCO; images carry "challenging", annotations "overlap"
    DIR/images/{split}/STEM.png             converted 3-channel 8-bit (training.scans.write_converted)
    DIR/raw/{split}/STEM_high.png, STEM_low.png   16-bit greyscale
    DIR/dicos/{split}/STEM_high.dcm, STEM_low.dcm, STEM_tdr.dcm   with --format dicos: the scan as a
        DICOS DX pair and its ground truth as a TDR (TDR type GROUND TRUTH, score 1), docs/dicos.md
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from xscreen.errors import XscreenError
from xscreen.model.classes import CLASS_NAMES, CLCXRAY_CLASSES
from xscreen.scans import convert_scan, quantise_converted
from xscreen.scans.dicos.dx import write_dx_pair
from xscreen.scans.dicos.tdr import AtrIdentity, ThreatObject, write_tdr
from xscreen.training.synth.scene import CHALLENGING_MIN_OVERLAP, MASK_DEPTH, make_scan

SPLITS = ("train", "val", "test")
# PNG settings (measured in benchmarks/synth_speed.py): one fixed filter (SUB for the 16-bit raw
# images, UP for the converted ones) and Huffman-only zlib -- noisy scans gain little from LZ77 or
# adaptive filtering, which cost 1.5x the time. "fast" stores without compression (~3x larger).
_H, _S, _F = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_FILTER
PNG_PARAMS = {
    "raw": [_H, 1, _S, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, _F, cv2.IMWRITE_PNG_FILTER_SUB],
    "converted": [_H, 1, _S, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, _F, cv2.IMWRITE_PNG_FILTER_UP],
    "fast": [_H, 0, _F, cv2.IMWRITE_PNG_FILTER_NONE],
}


class SynthError(XscreenError):
    """Bad synthetic-scanner option or output directory."""


@dataclass(frozen=True)
class SynthConfig:
    images: int
    seed: int
    height: int = 640
    width: int = 640
    overlap_rate: float = 0.3
    similar_rate: float = 0.2
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
    fast_png: bool = False  # uncompressed PNGs: faster, ~3x more disk
    dicos: bool = False  # also write each scan as a DICOS DX pair and its ground truth as a TDR


def split_of_images(n: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Split name per image index: counts from the fractions (largest remainder), order shuffled by seed."""
    raw = np.array(fractions, dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    names = np.repeat(np.array(SPLITS), counts)
    return list(np.random.default_rng([seed, 0x5EED]).permutation(names))


def _imwrite(path: Path, img: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), img, params):
        raise SynthError(f"{path}: cannot write image")


def _render_one(job: tuple[SynthConfig, Path, int, str]) -> dict:
    """Simulate image ``index`` (its own RNG stream: deterministic whatever the worker count)."""
    cfg, out, index, split = job
    rng = np.random.default_rng([cfg.seed, index])
    scan = make_scan(rng, cfg.height, cfg.width, cfg.overlap_rate, cfg.similar_rate)
    stem = f"synth_{index:06d}"
    raw_params = PNG_PARAMS["fast" if cfg.fast_png else "raw"]
    _imwrite(out / "raw" / split / f"{stem}_high.png", scan.high, raw_params)
    _imwrite(out / "raw" / split / f"{stem}_low.png", scan.low, raw_params)
    # Converted image: channel order fixed by training.scans (RGB -> BGR before cv2 writes it).
    conv = quantise_converted(convert_scan(scan.high, scan.low))
    conv_params = PNG_PARAMS["fast" if cfg.fast_png else "converted"]
    _imwrite(out / "images" / split / f"{stem}.png", cv2.cvtColor(conv, cv2.COLOR_RGB2BGR), conv_params)
    if cfg.dicos:
        _write_dicos(out / "dicos" / split, stem, scan)
    return {
        "index": index,
        "split": split,
        "stem": stem,
        "challenging": scan.challenging,
        "objects": [
            {
                "name": o.name,
                "box": o.box,
                "area": o.area,
                "overlap": o.overlap,
                "overlap_objects": o.overlap_objects,
                "overlap_similar": o.overlap_similar,
            }
            for o in scan.objects
        ],
    }


_GROUP = {c.name: c.group for c in CLCXRAY_CLASSES}
SYNTH_ATR = AtrIdentity("xscreen synthetic scanner", "ground truth", "")


def _write_dicos(folder: Path, stem: str, scan) -> None:
    """The scan as a DX pair (explicit VR little endian) and its objects as a ground-truth TDR."""
    import pydicom

    high, low = write_dx_pair(scan.high, scan.low, scan_id=stem)
    (folder / f"{stem}_high.dcm").write_bytes(high)
    (folder / f"{stem}_low.dcm").write_bytes(low)
    refs = []
    for buf in (high, low):
        ds = pydicom.dcmread(io.BytesIO(buf), stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        study = str(ds.StudyInstanceUID)
    objects = [ThreatObject(tuple(map(float, o.box)), o.name, _GROUP[o.name], 1.0) for o in scan.objects]
    tdr = write_tdr(
        objects, atr=SYNTH_ATR, references=refs, study_uid=study, scan_id=stem, tdr_type="GROUND TRUTH"
    )
    (folder / f"{stem}_tdr.dcm").write_bytes(tdr)


def remove_previous_output(out: Path) -> int:
    """Delete an earlier synthetic dataset's files (only names this writer produces); return the count."""
    n = 0
    for split in SPLITS:
        for pattern in (
            f"raw/{split}/synth_*_high.png",
            f"raw/{split}/synth_*_low.png",
            f"images/{split}/synth_*.png",
            f"dicos/{split}/synth_*.dcm",
        ):
            for f in out.glob(pattern):
                f.unlink()
                n += 1
        ann = out / "annotations" / f"{split}.json"
        if ann.is_file():
            ann.unlink()
            n += 1
    return n


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"--out {out} exists and is not empty (pass --overwrite to write into it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".xscreen-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SynthError(f"--out {out} is not writable ({exc.strerror or exc})") from None


def write_dataset(cfg: SynthConfig, out: str | Path, *, workers: int = 1, progress: bool = True) -> dict:
    """Simulate ``cfg.images`` scans into ``out``; return counts (images, boxes, challenging) per split."""
    out = Path(out)
    splits = split_of_images(cfg.images, cfg.splits, cfg.seed)
    for sub in ("raw", "images", "dicos") if cfg.dicos else ("raw", "images"):
        for split in SPLITS:
            (out / sub / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    records = _render_all([(cfg, out, i, splits[i]) for i in range(cfg.images)], workers, progress)
    summary = {}
    ann_id = 0
    for split in SPLITS:
        coco, ann_id = _coco_split(cfg, split, records, ann_id)
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        summary[split] = {
            "images": len(coco["images"]),
            "boxes": len(coco["annotations"]),
            "challenging": sum(im["challenging"] for im in coco["images"]),
        }
    summary["classes"] = {n: 0 for n in CLASS_NAMES}
    for rec in records:
        for o in rec["objects"]:
            summary["classes"][o["name"]] += 1
    return summary


def _render_all(jobs: list[tuple], workers: int, progress: bool) -> list[dict]:
    """``_render_one`` of every job, in job order, in ``workers`` processes (1: in this one)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress)
    records: list[dict] = []
    if workers > 1:
        # forkserver, not fork: a fork copies whatever locks the caller's other threads hold (OpenMP, cv2,
        # an in-process server), and a worker then waits on one forever
        ctx = mp.get_context("spawn" if os.name == "nt" else "forkserver")
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for rec in pool.imap(_render_one, jobs, chunksize=4):  # imap keeps the order
                records.append(rec)
                bar.update()
    else:
        for job in jobs:
            records.append(_render_one(job))
            bar.update()
    bar.close()
    return records


def _coco_split(cfg: SynthConfig, split: str, records: list[dict], ann_id: int) -> tuple[dict, int]:
    """The COCO json of ``split``'s records, its annotation ids counting on from ``ann_id``; the last id."""
    cat_id = {c.name: c.category_id for c in CLCXRAY_CLASSES}
    images, anns = [], []
    for rec in records:
        if rec["split"] != split:
            continue
        image_id = rec["index"] + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"{rec['stem']}.png",
                "height": cfg.height,
                "width": cfg.width,
                "challenging": rec["challenging"],
                "raw_high": f"raw/{split}/{rec['stem']}_high.png",
                "raw_low": f"raw/{split}/{rec['stem']}_low.png",
            }
        )
        if cfg.dicos:
            for part in ("high", "low", "tdr"):
                images[-1][f"dicos_{part}"] = f"dicos/{split}/{rec['stem']}_{part}.dcm"
        for o in rec["objects"]:
            ann_id += 1
            x1, y1, x2, y2 = o["box"]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_id[o["name"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": o["area"],
                    "iscrowd": 0,
                    "overlap": round(o["overlap"], 4),
                    "overlap_objects": round(o["overlap_objects"], 4),
                    "overlap_similar": round(o["overlap_similar"], 4),
                }
            )
    coco = {
        "info": {
            "description": "xscreen synthetic dual-energy scans",
            "seed": cfg.seed,
            "size": [cfg.height, cfg.width],
            "overlap_rate": cfg.overlap_rate,
            "similar_rate": cfg.similar_rate,
            "mask_optical_depth": MASK_DEPTH,
            "challenging_rule": f"an object with >= {CHALLENGING_MIN_OVERLAP:.0%} of its mask covered by "
            "another threat object or by similar-looking clutter",
            "channel_order": "images/*.png: RGB = (high/256, low/256, 510*sigmoid(high/low)-255)",
        },
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": c.category_id, "name": c.name, "supercategory": c.group} for c in CLCXRAY_CLASSES
        ],
    }
    return coco, ann_id
