"""Classify images with the exported model: needs only onnxruntime, numpy and Pillow.

    python predict.py photo1.jpg photo2.png [--model model.onnx] [--top-k 3]

Prints one JSON line per image: {"image": ..., "top_k": [{"class", "probability"}]}
or {"image": ..., "error": ...}. The preprocessing is read from the model's own
metadata (or preprocess.json beside it) and is the same as Transfer Studio's:
EXIF orientation, transparency on white, RGB, shorter side resized to the input
size (bilinear), centre crop, (pixel/255 - mean) / std, then
softmax(logits / temperature).

(Shipped in the Transfer Studio download bundle; kept in step with
engine/data/images.py and engine/inference.py, and tested against them.)
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Only these decoders (as engine/data/images.py IMAGE_FORMATS): EPS would run Ghostscript.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit or float greyscale: scale to 8 bits by the image's own range.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        background.alpha_composite(img.convert("RGBA"))
        img = background
    return img.convert("RGB")


def load_rgb(path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                raise ValueError(f"image is {img.size[0]}x{img.size[1]}, over the {MAX_IMAGE_PIXELS:,} pixel limit")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


class Classifier:
    def __init__(self, model_path: Path):
        self.session = ort.InferenceSession(str(model_path), providers=ort.get_available_providers())
        meta = self.session.get_modelmeta().custom_metadata_map
        if "transfer_studio.preprocess" in meta:
            self.pre = json.loads(meta["transfer_studio.preprocess"])
        else:
            self.pre = json.loads((Path(model_path).parent / "preprocess.json").read_text())
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, path) -> np.ndarray:
        pixels = resize_center_crop(load_rgb(path), self.pre["input_size"])
        if self.pre.get("input_dtype") == "uint8":
            return pixels  # normalisation is inside the graph
        scaled = pixels.astype(np.float32) / 255.0
        arr = (scaled - np.asarray(self.pre["mean"], np.float32)) / np.asarray(self.pre["std"], np.float32)
        return arr.transpose(2, 0, 1)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.uint8 if self.pre.get("input_dtype") == "uint8" else np.float32
        logits = np.concatenate([
            self.session.run(None, {self.input_name: np.ascontiguousarray(batch[i : i + 64], dtype=dtype)})[0]
            for i in range(0, len(batch), 64)
        ])
        z = logits.astype(np.float32) / np.float32(self.pre.get("temperature", 1.0))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default=str(here / "model.onnx"))
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)
    clf = Classifier(Path(args.model))
    classes = clf.pre["classes"]
    top_k = max(1, min(args.top_k, len(classes)))
    prepared, errors = [], {}
    for i, path in enumerate(args.images):
        try:
            prepared.append(clf.prepare(path))
        except Exception as exc:  # one bad file must not stop the others
            errors[i] = f"unreadable image ({exc})"
    probs = iter(clf.probabilities(np.stack(prepared)) if prepared else [])
    for i, path in enumerate(args.images):
        if i in errors:
            print(json.dumps({"image": path, "error": errors[i]}))
            continue
        row = next(probs)
        order = np.argsort(-row)[:top_k]
        best = [{"class": classes[j], "probability": float(row[j])} for j in order]
        print(json.dumps({"image": path, "top_k": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
