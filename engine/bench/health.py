"""``python -m engine bench health``: how fast the dataset health check is.

Draws N small real images (PNG and JPEG, 32-64 px, with some exact and near
duplicates and a few broken files) in a temporary folder, then times, in the
same run and on the same files:

* the health check: one read per file (content hash + reduced-scale decode
  for the pHash, in two threads), then the report's table arithmetic;
* a naive baseline computing the same per-file facts the obvious way: a
  header probe (as the first scanner did), a SHA-256 of the bytes, a full RGB
  decode, and the pHash from the full-size image, one file after another.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from engine.data.images import MAX_IMAGE_PIXELS, ImageProblem, load_rgb, perceptual_hash

__all__ = ["make_bench_dataset", "bench_health", "format_report"]


def make_bench_dataset(root: Path, n: int, classes: int = 10, seed: int = 0, max_side: int = 64) -> Path:
    """``n`` drawn images in ``classes`` folders; ~2% duplicates, ~1% near duplicates, ~0.2% broken."""
    rng = np.random.default_rng(seed)
    made: list[Path] = []
    for i in range(n):
        label = f"class_{i % classes:02d}"
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        roll = rng.random()
        if made and roll < 0.02:
            src = made[int(rng.integers(len(made)))]
            dst = folder / f"dup_{i:06d}{src.suffix}"
            shutil.copyfile(src, dst)
        elif made and roll < 0.03:
            src = made[int(rng.integers(len(made)))]
            dst = folder / f"near_{i:06d}.jpg"
            with Image.open(src) as img:
                img.convert("RGB").resize((img.width + 4, img.height + 4)).save(dst, quality=90)
        elif roll < 0.032:
            dst = folder / f"broken_{i:06d}.jpg"
            dst.write_bytes(b"this is not a jpeg" if roll < 0.031 else b"\xff\xd8\xff\xe0" + bytes(40))
        else:
            size = int(rng.integers(max_side // 2, max_side + 1))
            canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(canvas)
            for _ in range(3):
                box = sorted(rng.integers(0, size, 2).tolist()) + sorted(rng.integers(0, size, 2).tolist())
                draw.rectangle([box[0], box[2], box[1], box[3]], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            dst = folder / f"img_{i:06d}.{'png' if i % 2 else 'jpg'}"
            canvas.save(dst)
            made.append(dst)
    return root


def _probe_header(path: Path) -> tuple[int, int, str]:
    """Width, height and mode from the header alone: the naive baseline's first read of each file."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
            fmt = img.format
    except UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise ImageProblem("image dimensions are too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"unreadable image ({exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageProblem(f"image is {width}x{height}, over the {MAX_IMAGE_PIXELS:,} pixel limit")
    if fmt is None:
        raise ImageProblem("not an image (unrecognised format)")
    return width, height, mode


def _naive(files: list[Path]) -> int:
    ok = 0
    for path in files:
        hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            _probe_header(path)
            perceptual_hash(load_rgb(path))
            ok += 1
        except ImageProblem:
            pass
    return ok


def bench_health(n: int = 10_000, seed: int = 0, max_side: int = 64) -> dict:
    from engine.data.health import health_check

    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-health-"))
    try:
        t0 = time.perf_counter()
        root = make_bench_dataset(tmp / "data", n, seed=seed, max_side=max_side)
        make_s = time.perf_counter() - t0
        files = sorted(p for p in root.rglob("*") if p.is_file())
        # Same cold-ish page cache for both: read every file once first.
        for path in files:
            path.read_bytes()
        t0 = time.perf_counter()
        _naive(files)
        naive_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dataset, report = health_check(root)
        health_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        health_check(root)
        cached_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "images": len(files),
        "max_side": max_side,
        "cpu_count": os.cpu_count(),
        "make_s": round(make_s, 2),
        "health_s": round(health_s, 3),
        "health_images_per_s": round(len(files) / health_s, 1),
        "health_rescan_s": round(cached_s, 3),
        "naive_decode_hash_s": round(naive_s, 3),
        "naive_images_per_s": round(len(files) / naive_s, 1),
        "speedup_vs_naive": round(naive_s / health_s, 2),
        "unreadable": len(report["unreadable"]),
        "exact_duplicate_pairs": report["duplicates"]["exact"]["pairs"],
        "near_duplicate_pairs": report["duplicates"]["near"]["pairs"],
    }


def format_report(r: dict) -> str:
    return "\n".join([
        f"health check on {r['images']:,} drawn images of {r['max_side'] // 2}-{r['max_side']} px "
        f"({r['cpu_count']} CPU cores; drawing took {r['make_s']}s)",
        f"  health check (hash + thumbnail pHash + report): {r['health_s']:.2f}s = "
        f"{r['health_images_per_s']:,.0f} images/s",
        f"  rescan with manifest cache:                     {r['health_rescan_s']:.2f}s",
        f"  naive (probe + sha256 + full decode + pHash):   {r['naive_decode_hash_s']:.2f}s = "
        f"{r['naive_images_per_s']:,.0f} images/s",
        f"  speed-up of the health check over naive: {r['speedup_vs_naive']:.2f}x (naive has no report)",
        f"  found: {r['unreadable']} unreadable, {r['exact_duplicate_pairs']} exact and "
        f"{r['near_duplicate_pairs']} near duplicate pairs",
    ])
