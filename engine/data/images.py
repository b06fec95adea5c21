"""Opening untrusted image files as RGB, and the one eval-time resize policy.

Every path that turns a file into pixels (training cache, evaluation, predict,
the exported bundle) goes through :func:`load_rgb` and :func:`resize_center_crop`
so the app, the CLI and the ONNX consumer see the same pixels.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "IMAGE_FORMATS",
    "open_image",
    "MAX_IMAGE_PIXELS",
    "MAX_FILE_BYTES",
    "ImageProblem",
    "inspect_file",
    "perceptual_hash",
    "hamming",
    "load_rgb",
    "resize_center_crop",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# The decoders PIL may use on an untrusted file (JPEG includes the MPO that many phones write). Every other
# format PIL knows stays off: EPS runs Ghostscript, and FLI, PCX, PSD, DDS... are attack surface nobody needs.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
# 40 MP is larger than any sensible training image and far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000


# Larger files are refused before they are read into memory.
MAX_FILE_BYTES = 256 * 1024**2
# EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap.
_EXIF_ORIENTATION = 0x0112


class ImageProblem(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k, x = np.arange(keep)[:, None], np.arange(n)[None, :]
    rows = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    rows[0] /= np.sqrt(2.0)
    return rows.astype(np.float32)


# Only the 8 lowest frequencies are needed: two small matmuls, not a full 2-D DCT.
_DCT_LOW = _dct_rows(32, 8)


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (pHash) as int64.

    The 8x8 lowest frequencies of a 32x32 grey thumbnail's DCT, each compared
    with their median. Low frequencies survive resizing, re-encoding and
    sensor noise, which flip many bits of a gradient hash (dHash) on images
    with flat, noisy backgrounds.
    """
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    low = (_DCT_LOW @ grey @ _DCT_LOW.T).ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0].astype(np.int64))


def inspect_file(path: Path | str) -> dict:
    """Everything the manifest needs about one file, reading it once.

    Returns ``width, height`` (after EXIF rotation), ``mode``, ``hash`` (content
    hash of the bytes), ``phash`` (64-bit DCT perceptual hash as int64) and ``status`` ("ok"
    or the reason the file is unusable). The pixels are decoded once, at a
    reduced scale where the codec allows it (JPEG ``draft``), which also
    proves the file is complete: a truncated image fails here, not in training.
    """
    facts = {"width": 0, "height": 0, "mode": "", "hash": "", "phash": 0, "status": "ok"}
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            facts["status"] = f"file is over the {MAX_FILE_BYTES // 1024**2} MB limit"
            return facts
    except OSError as exc:
        facts["status"] = f"cannot read file ({exc.strerror or exc})"
        return facts
    facts["hash"] = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with open_image(io.BytesIO(data)) as img:
            width, height = img.size
            mode = img.mode
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            img.draft("RGB" if mode not in ("L", "1") else "L", (32, 32))
            img.load()
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            thumb = ImageOps.exif_transpose(img) if orientation != 1 else img
            if thumb.mode not in ("L", "RGB", "1", "P", "RGBA", "LA", "CMYK", "YCbCr"):
                thumb = _to_rgb(thumb)
            facts.update(width=width, height=height, mode=mode, phash=perceptual_hash(thumb))
    except ImageProblem as exc:
        facts["status"] = str(exc)
    return facts


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between 64-bit hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.int64), b.astype(np.int64)))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the image's own range.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as most viewers show them.
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        background.alpha_composite(img.convert("RGBA"))
        img = background
    return img.convert("RGB")


@contextmanager
def open_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """The one way the product opens an untrusted image: the allowed formats only, the pixel count
    checked from the header before anything is decoded, and every decoder failure (inside the ``with``
    block too) turned into one :class:`ImageProblem` line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as img:
                if img.size[0] * img.size[1] > max_pixels:
                    raise ImageProblem(f"image is {img.size[0]}x{img.size[1]}, over the {max_pixels:,} pixel limit")
                yield img
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised or unsupported format; use "
                           f"{', '.join(IMAGE_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("image dimensions are too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageProblem(f"unreadable or truncated image ({exc})") from None


def load_rgb(path_or_file, draft_size: int | None = None) -> Image.Image:
    """Decode an untrusted image to an RGB PIL image, EXIF orientation applied.

    ``draft_size``: the caller needs no more than this many pixels on the shorter side, so a JPEG is
    decoded at the smallest DCT scale that keeps at least that (a 36 MP photo for a 224 px model
    decodes at 1/8 its size); other formats decode in full and are dropped by the caller.
    """
    with open_image(path_or_file) as img:
        if draft_size and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), then the central ``size`` x ``size``.

    Returns a ``(size, size, 3)`` uint8 array. This is the eval-time policy that
    the ONNX sidecar records, so it must stay in step with ``export/predict.py``.
    """
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
