"""Classify images with the exported model: needs only onnxruntime, numpy and Pillow.

    python predict.py photo1.jpg photo2.png [--model model.onnx] [--top-k 3]

Prints one JSON line per image: {"image": ..., "top_k": [{"class", "probability"}]}
or {"image": ..., "error": ...}. With ood_reference.npz beside the model (a quantised
sample of training features, written when the run was evaluated), each image line also
has "unlike_training" and "ood_score", and for 5 images or more a last line
{"summary": "batch", ...} tests the whole batch against the training data (MMD
permutation test) and says it in words. The preprocessing is read from the model's own
metadata (or preprocess.json beside it) and is the same as Transfer Studio's:
EXIF orientation, transparency on white, RGB, shorter side resized to the input
size (bilinear), centre crop, (pixel/255 - mean) / std, then
softmax(logits / temperature).

(Shipped in the Transfer Studio download bundle; kept in step with
engine/data/images.py, engine/inference.py, engine/evaluation/ood.py and shift.py, and
tested against them.)
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

    def probabilities_and_features(self, batch: np.ndarray):
        """Probabilities, and the pooled backbone features when the model outputs them (else None)."""
        dtype = np.uint8 if self.pre.get("input_dtype") == "uint8" else np.float32
        names = [o.name for o in self.session.get_outputs()]
        wanted = [names[0], "features"] if "features" in names else [names[0]]
        outputs = [self.session.run(wanted, {self.input_name: np.ascontiguousarray(batch[i : i + 64], dtype=dtype)})
                   for i in range(0, len(batch), 64)]
        logits = np.concatenate([o[0] for o in outputs])
        features = np.concatenate([o[1] for o in outputs]).reshape(len(logits), -1) if len(wanted) > 1 else None
        z = logits.astype(np.float32) / np.float32(self.pre.get("temperature", 1.0))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True), features

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.probabilities_and_features(batch)[0]


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Reference:
    """The compact out-of-distribution reference: int8 unit training features, rank k, threshold."""

    def __init__(self, path: Path):
        with np.load(path, allow_pickle=False) as blob:
            self.features = unit_rows(blob["codes"].astype(np.float32) / 127.0)
            self.k = int(blob["k"])
            self.threshold = float(blob["threshold"])
            self.batch_rows = int(blob["batch_reference_rows"])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row (L2-normalised) to its k-th nearest reference row."""
        sims = unit_rows(features) @ self.features.T
        kth = -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
        return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


PERMUTATIONS = 1999
ALPHA = 0.01
MIN_BATCH = 5


def batch_test(batch: np.ndarray, reference: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0):
    """(unbiased MMD^2, permutation p-value) of the batch's unit features against the reference's, with a
    Gaussian kernel of median-distance width (as engine/evaluation/shift.py)."""
    x, y = unit_rows(reference), unit_rows(batch)
    m, n = len(x), len(y)
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    width2 = float(np.median(sq[np.triu_indices(len(z), 1)])) or 1.0
    kernel = np.exp(-sq / width2)
    np.fill_diagonal(kernel, 0.0)
    rng = np.random.default_rng(seed)
    assign = np.zeros((permutations + 1, m + n))
    assign[0, m:] = 1.0
    for i in range(1, permutations + 1):
        assign[i, rng.permutation(m + n)[:n]] = 1.0
    total = kernel.sum()
    ks = assign @ kernel
    within_batch = (ks * assign).sum(1)
    cross = ks.sum(1) - within_batch
    within_ref = total - within_batch - 2 * cross
    stats = within_ref / (m * (m - 1)) + within_batch / (n * (n - 1)) - 2 * cross / (m * n)
    return float(stats[0]), float((1 + (stats[1:] >= stats[0]).sum()) / (permutations + 1))


def sentence(p: float, flagged_share: float, permutations: int = PERMUTATIONS) -> str:
    floor = 1.0 / (permutations + 1)
    if p <= floor * 1.0001:
        p_text = f"p < {0.001 if floor < 0.001 else round(floor * 1.0001, 4)}"
    else:
        p_text = f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"
    verdict = "differs from" if p < ALPHA else "is not shown to differ from"
    return (f"this batch {verdict} the training data ({p_text}); {100 * flagged_share:.0f} % of its images "
            "are flagged")


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default=str(here / "model.onnx"))
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--reference", help="out-of-distribution reference (default: ood_reference.npz beside "
                        "the model)")
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
    probs, features = clf.probabilities_and_features(np.stack(prepared)) if prepared else (np.zeros((0, 0)), None)
    reference_path = Path(args.reference) if args.reference else Path(args.model).resolve().parent / "ood_reference.npz"
    reference = Reference(reference_path) if features is not None and reference_path.is_file() else None
    scores = flags = None
    if reference is not None and features is not None:
        scores = reference.scores(features)
        flags = scores > reference.threshold
    read = 0
    for i, path in enumerate(args.images):
        if i in errors:
            print(json.dumps({"image": path, "error": errors[i]}))
            continue
        row = probs[read]
        order = np.argsort(-row)[:top_k]
        line = {"image": path, "top_k": [{"class": classes[j], "probability": float(row[j])} for j in order]}
        if scores is not None and flags is not None:
            line |= {"unlike_training": bool(flags[read]), "ood_score": float(scores[read])}
        print(json.dumps(line))
        read += 1
    if reference is not None and features is not None and flags is not None and read >= MIN_BATCH:
        mmd2, p = batch_test(features, reference.features[: reference.batch_rows])
        share = float(np.mean(flags))
        test = {"images": read, "reference_images": reference.batch_rows, "mmd2": mmd2, "p_value": p,
                "permutations": PERMUTATIONS, "shifted": p < ALPHA, "flagged_share": share,
                "sentence": sentence(p, share)}
        print(json.dumps({"summary": "batch", "images": read, "errors": len(errors), "flagged": int(np.sum(flags)),
                          "batch_test": test, "sentence": test["sentence"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
