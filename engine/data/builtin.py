"""Built-in datasets: a registry of builders that write class folders on first use.

Each builder writes an ImageFolder tree (``train/<class>/*.png``,
``val/<class>/*.png``) into a fresh folder; :func:`materialise` makes that
atomic (a stage of its own, a lock per destination, a completion marker) so several
users asking at once never see half a dataset.
"""
from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserError
from engine.workspace import atomic_dir, dest_lock, dir_complete, shared_datasets_dir

__all__ = ["BuiltinDataset", "BUILTIN_DATASETS", "register_builtin", "materialise", "DEFAULT_DATASET",
           "write_fashion_mnist"]

FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
FASHION_MNIST_CLASSES = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
]


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    build: Callable[[Path], None]


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {}


def register_builtin(name: str, description: str):
    """Decorator: an operator adds a dataset by registering a builder function."""

    def wrap(build: Callable[[Path], None]):
        BUILTIN_DATASETS[name] = BuiltinDataset(name, description, build)
        return build

    return wrap


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    _zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    for folder in FASHION_MNIST_DIRS:
        def find(stem):
            for suffix in (".gz", ""):
                path = folder / f"{stem}{suffix}"
                if path.is_file():
                    return path
            return None

        files = {k: find(k) for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
        if all(files.values()):
            return {
                "train": (_read_idx(files["train-images-idx3-ubyte"]), _read_idx(files["train-labels-idx1-ubyte"])),
                "test": (_read_idx(files["t10k-images-idx3-ubyte"]), _read_idx(files["t10k-labels-idx1-ubyte"])),
            }
    # Not packaged here: torchvision's downloader, as a normal deployment would.
    try:
        from torchvision.datasets import FashionMNIST

        root = shared_datasets_dir() / ".torchvision"
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = FashionMNIST(root, train=train, download=True)
            out[split] = (ds.data.numpy(), ds.targets.numpy())
        return out
    except Exception as exc:
        raise UserError(
            "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist) "
            f"and could not be downloaded ({type(exc).__name__})"
        ) from None


def _write_balanced(dest: Path, split: str, images: np.ndarray, labels: np.ndarray,
                    classes: list[str], per_class: int | list[int], seed: int,
                    class_ids: list[int] | None = None) -> None:
    """``per_class`` images of each class (a list: a count per class); ``class_ids``: the
    source label of each of ``classes`` (default: their position)."""
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, list) else [per_class] * len(classes)
    for index, name, count in zip(class_ids or range(len(classes)), classes, counts):
        chosen = rng.choice(np.flatnonzero(labels == index), size=count, replace=False)
        folder = dest / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in sorted(chosen):
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


@register_builtin(
    "fashion-mnist",
    "Fashion-MNIST, balanced subset: 100 training and 50 validation images per class "
    "(10 classes, 28x28 greyscale; validation from the official test split)",
)
def _build_fashion_mnist(dest: Path) -> None:
    arrays = _fashion_mnist_arrays()
    _write_balanced(dest, "train", *arrays["train"], FASHION_MNIST_CLASSES, per_class=100, seed=0)
    _write_balanced(dest, "val", *arrays["test"], FASHION_MNIST_CLASSES, per_class=50, seed=0)


def write_fashion_mnist(dest: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> None:
    """Fashion-MNIST as a folder of 28 px PNGs, ``train/`` and ``val/`` (validation from the official test
    split; at most 6,000 and 1,000 per class): the data ``bench scale`` grows to 70,000 images."""
    arrays = _fashion_mnist_arrays()
    _write_balanced(dest, "train", *arrays["train"], FASHION_MNIST_CLASSES, per_class=train_per_class, seed=seed)
    _write_balanced(dest, "val", *arrays["test"], FASHION_MNIST_CLASSES, per_class=val_per_class, seed=seed)


IMBALANCED_CLASSES = [0, 1, 2, 7, 8]  # T-shirt_top, Trouser, Pullover, Sneaker, Bag
IMBALANCED_TRAIN = [400, 160, 80, 40, 20]  # 20x between the largest and the smallest class


@register_builtin(
    "fashion-mnist-imbalanced",
    "Fashion-MNIST, 5 classes with 400/160/80/40/20 training images (20x imbalance) and validation in the "
    "same proportions (200/80/40/20/10, from the official test split); 28x28 greyscale",
)
def _build_fashion_mnist_imbalanced(dest: Path) -> None:
    arrays = _fashion_mnist_arrays()
    classes = [FASHION_MNIST_CLASSES[i] for i in IMBALANCED_CLASSES]
    _write_balanced(dest, "train", *arrays["train"], classes, IMBALANCED_TRAIN, seed=1, class_ids=IMBALANCED_CLASSES)
    _write_balanced(dest, "val", *arrays["test"], classes, [n // 2 for n in IMBALANCED_TRAIN], seed=1,
                    class_ids=IMBALANCED_CLASSES)


@register_builtin(
    "fashion-mnist-tiny",
    "Fashion-MNIST with 10 training images per class (100 in all) and 50 validation images per class; "
    "the few-shot case",
)
def _build_fashion_mnist_tiny(dest: Path) -> None:
    arrays = _fashion_mnist_arrays()
    _write_balanced(dest, "train", *arrays["train"], FASHION_MNIST_CLASSES, per_class=10, seed=2)
    _write_balanced(dest, "val", *arrays["test"], FASHION_MNIST_CLASSES, per_class=50, seed=2)


LARGE_TEXTURES = ("brick", "grass", "gravel", "moon", "camera")


@register_builtin(
    "textures-224",
    "Large greyscale images: 224 px crops (random 120-200 px regions, rotated, brightness varied) of five "
    "scikit-image photographs (brick, grass, gravel, moon surface, camera man); 40 training and 20 validation "
    "crops per class, training crops from the top 60% of each photo and validation crops from the bottom 40%, "
    "so no pixel is in both",
)
def _build_textures_224(dest: Path) -> None:
    from skimage import data

    rng = np.random.default_rng(3)
    for name in LARGE_TEXTURES:
        photo = getattr(data, name)()
        cut = int(photo.shape[0] * 0.6)
        for split, region, count in (("train", photo[:cut], 40), ("val", photo[cut:], 20)):
            folder = dest / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(120, min(201, *region.shape)))
                top = int(rng.integers(0, region.shape[0] - side + 1))
                left = int(rng.integers(0, region.shape[1] - side + 1))
                crop = np.rot90(region[top : top + side, left : left + side], k=int(rng.integers(4)))
                crop = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
                Image.fromarray(crop).resize((224, 224), Image.Resampling.BILINEAR).save(folder / f"{name}_{i:02d}.png")


GARMENT_CLASSES = [0, 2, 4, 6, 3, 8]  # T-shirt_top, Pullover, Coat, Shirt, Dress, Bag: the first four look alike
GARMENT_TRAIN = [560, 350, 230, 150, 90, 60]  # 9x between the largest and the smallest class
GARMENT_BACKGROUNDS = ("brick", "grass", "gravel", "moon")
GARMENT_SIZE = 224


def _garment_scene(item: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 224 px greyscale scene: a 28 px Fashion-MNIST garment, upscaled 4-7.5x and rotated, laid at a random
    place and contrast (brighter or darker) on a random crop of a texture photograph (its contrast damped,
    its brightness shifted), then blurred and noised."""
    from PIL import ImageFilter

    # A crop of 160 px or more (the validation regions are only 205 px tall), resized to 224.
    side = int(rng.integers(160, min(background.shape) + 1))
    top = int(rng.integers(0, background.shape[0] - side + 1))
    left = int(rng.integers(0, background.shape[1] - side + 1))
    bg = Image.fromarray(background[top : top + side, left : left + side]).resize(
        (GARMENT_SIZE, GARMENT_SIZE), Image.Resampling.BILINEAR)
    scene = np.asarray(bg, dtype=np.float32)
    scene = (scene - scene.mean()) * rng.uniform(0.4, 0.8) + rng.uniform(90, 160)  # texture contrast damped
    span = int(rng.integers(112, 209))
    mask = Image.fromarray(item).resize((span, span), Image.Resampling.BILINEAR).rotate(
        float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
    alpha = np.zeros((GARMENT_SIZE, GARMENT_SIZE), dtype=np.float32)
    y, x = (int(v) for v in rng.integers(0, GARMENT_SIZE - span + 1, size=2))
    alpha[y : y + span, x : x + span] = np.asarray(mask, dtype=np.float32) / 255.0
    tone = rng.uniform(200, 255) if rng.random() < 0.5 else rng.uniform(0, 50)
    strength = rng.uniform(0.55, 0.9)  # the garment never fully hides the texture
    scene = scene * (1 - strength * alpha) + tone * strength * alpha
    scene = np.asarray(Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0)))), dtype=np.float32)
    scene += rng.normal(0, rng.uniform(4, 12), scene.shape)
    return np.clip(scene, 0, 255).astype(np.uint8)


@register_builtin(
    "garments-224",
    "Hard and far from ImageNet: 2,160 greyscale 224 px scenes of six Fashion-MNIST garments (T-shirt, "
    "pullover, coat, shirt, dress, bag; the first four look alike), each upscaled 4-7.5x, rotated, laid at a "
    "random place and partial contrast on a crop of a texture photograph (brick, grass, gravel, moon surface), "
    "blurred and noised; imbalanced 560/350/230/150/90/60 training scenes and half as many for validation. "
    "Validation garments come from Fashion-MNIST's test split and their backgrounds from the bottom 40 % of "
    "each photograph (training: the official training split, the top 60 %), so no garment or pixel is in both",
)
def _build_garments_224(dest: Path) -> None:
    # Deterministic: one seeded generator draws the garments, photographs, placements and noise in order.
    from skimage import data

    arrays = _fashion_mnist_arrays()
    rng = np.random.default_rng(19)
    photos = [getattr(data, name)() for name in GARMENT_BACKGROUNDS]
    for split, source, counts in (("train", "train", GARMENT_TRAIN), ("val", "test", [n // 2 for n in GARMENT_TRAIN])):
        images, labels = arrays[source]
        regions = [p[: int(p.shape[0] * 0.6)] if split == "train" else p[int(p.shape[0] * 0.6):] for p in photos]
        for index, count in zip(GARMENT_CLASSES, counts):
            folder = dest / split / FASHION_MNIST_CLASSES[index]
            folder.mkdir(parents=True, exist_ok=True)
            for i in sorted(rng.choice(np.flatnonzero(labels == index), size=count, replace=False)):
                region = regions[int(rng.integers(len(regions)))]
                Image.fromarray(_garment_scene(images[i], region, rng)).save(folder / f"{i:05d}.png")


@register_builtin("digits", "scikit-learn digits: 1,797 handwritten digits, 8x8 greyscale, 10 classes")
def _build_digits(dest: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for i, (img, label) in enumerate(zip(images, digits.target)):
        folder = dest / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


@register_builtin(
    "skimage-textures",
    "Tiny demo, 3 classes x 30 images: random 64-160 px crops (resized to 64 px, randomly flipped) of the "
    "brick, grass and gravel greyscale texture photos bundled with scikit-image. One photo per class, so it shows "
    "the app working, not how a model generalises",
)
def _build_skimage_textures(dest: Path) -> None:
    from skimage import data

    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        photo = Image.fromarray(getattr(data, name)())
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(30):
            side = int(rng.integers(64, 161))
            left, top = (int(v) for v in rng.integers(0, np.array(photo.size) - side + 1))
            crop = photo.crop((left, top, left + side, top + side)).resize((64, 64), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{name}_{i:02d}.png")


DEFAULT_DATASET = "fashion-mnist"


def materialise(name: str) -> Path:
    """Folder of the built-in dataset ``name``, building it on first use."""
    if name not in BUILTIN_DATASETS:
        raise UserError(f"unknown built-in dataset '{name}'; choose one of: {', '.join(BUILTIN_DATASETS)}")
    dest = shared_datasets_dir() / f"builtin-{name}"
    if dir_complete(dest):
        return dest
    # Every first visitor asks at once: one builds (in a stage of its own), the others wait for it.
    with dest_lock(dest):
        if not dir_complete(dest):
            with atomic_dir(dest) as stage:
                BUILTIN_DATASETS[name].build(stage)
    return dest
