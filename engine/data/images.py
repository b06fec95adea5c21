"""Opening untrusted image files as RGB, and the one eval-time resize policy.

Every path that turns a file into pixels (training cache, evaluation, predict,
the exported bundle) goes through :func:`load_rgb` and :func:`resize_center_crop`
so the app, the CLI and the ONNX consumer see the same pixels.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "ImageProblem",
    "load_rgb",
    "probe_image",
    "resize_center_crop",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# 40 MP is larger than any sensible training image and far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000


class ImageProblem(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


def probe_image(path: Path) -> tuple[int, int, str]:
    """Width, height and mode from the header alone (no pixel decode)."""
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


def load_rgb(path_or_file) -> Image.Image:
    """Decode an untrusted image to an RGB PIL image, EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path_or_file) as img:
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                    raise ImageProblem(
                        f"image is {img.size[0]}x{img.size[1]}, over the {MAX_IMAGE_PIXELS:,} pixel limit"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("image dimensions are too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"unreadable or truncated image ({exc})") from None


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), then the central ``size`` x ``size``.

    Returns a ``(size, size, 3)`` uint8 array. This is the eval-time policy that
    the ONNX sidecar records, so it must stay in step with ``export/predict.py``.
    """
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
