"""A split's frozen features on disk, keyed by what they depend on.

The key is what the features depend on: the split's images (their paths and sizes,
not their labels) and the backbone's key (its architecture, weights, input size and
normalisation), so a second run, a second mode or a sweep over the same data reuses
the features, and so does a relabelled version of the dataset (a correction from the
label review would otherwise recompute every feature); the labels are read from the
dataset each time. Adding, dropping or replacing an image recomputes the split.
Images are decoded only when the features are not cached.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.data.dataset import Dataset
from engine.data.tensors import decode_split, decoded_cache_problem, iter_decoded
from engine.features.extract import FeatureExtractor, backbone_key, feature_extractor
from engine.workspace import atomic_path, cache_dir

__all__ = ["FeatureSet", "split_features", "images_key"]

Progress = Callable[[int, int, str], None]


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, index into the dataset's classes
    paths: list[str]
    cached: bool = False  # read from the cache rather than computed now

    def __len__(self) -> int:
        return len(self.labels)


def images_key(dataset: Dataset, split: str) -> str:
    """Hash of the images of ``split`` a feature depends on: paths and byte sizes, in order; no labels."""
    rows = dataset.usable.loc[dataset.usable["split"] == split, ["path", "bytes"]].astype(str)
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).values.tobytes())
    return digest.hexdigest()[:16]


def _current_labels(dataset: Dataset, split: str, paths: list[str], classes: list[str]) -> np.ndarray | None:
    """The labels the dataset gives ``paths`` now, as indices into ``classes``; None if one is unknown."""
    rows = dataset.usable[dataset.usable["split"] == split]
    label_of = dict(zip(rows["path"].astype(str), rows["label"].astype(str)))
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[label_of[p]] for p in paths], dtype=np.int64)
    except KeyError:
        return None


def split_features(dataset: Dataset, split: str, backbone: str, size: int, classes: list[str],
                   extractor: FeatureExtractor | Callable[[int], FeatureExtractor] | None = None,
                   progress: Progress | None = None) -> FeatureSet:
    """The pooled features of ``split``'s usable images, from the cache when present.

    ``extractor`` (or a function of the number of images that makes one, called only
    on a cache miss) runs the backbone; by default :func:`feature_extractor` on this
    machine's device.
    """
    folder = cache_dir() / "features"
    path = folder / f"{images_key(dataset, split)}-{split}-{backbone_key(backbone, size)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as blob:
                features, paths = blob["features"], [str(p) for p in blob["paths"]]
            labels = _current_labels(dataset, split, paths, classes)
            if labels is not None:
                return FeatureSet(features, labels, paths, cached=True)
        except Exception:
            path.unlink(missing_ok=True)  # damaged: compute again
    decode_progress = (lambda d, t: progress(d, t, f"decode {split}")) if progress else None
    feature_progress = (lambda d, t: progress(d, t, f"features {split}")) if progress else None

    def make(images: int) -> FeatureExtractor:
        if extractor is None:
            return feature_extractor(backbone, size, images=images)
        return extractor if isinstance(extractor, FeatureExtractor) else extractor(images)

    if decoded_cache_problem(dataset, split, size) is None:
        tensors = decode_split(dataset, split, size, classes, progress=decode_progress)
        run = make(len(tensors))
        feats = run.over_batches(tensors.batches(run.batch_size), len(tensors), feature_progress)
        labels, paths = tensors.labels.numpy(), list(tensors.paths)
    else:  # too large to keep decoded: decode and extract chunk by chunk, keeping only the features
        total = int((dataset.usable["split"] == split).sum())
        run = make(total)
        parts, label_parts, paths = [], [], []
        for block in iter_decoded(dataset, split, size, classes, progress=decode_progress):
            if len(block):
                parts.append(run(block.images))
                label_parts.append(block.labels.numpy())
                paths.extend(block.paths)
        feats = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        labels = np.concatenate(label_parts) if label_parts else np.zeros(0, dtype=np.int64)
        if feature_progress:
            feature_progress(total, total)
    result = FeatureSet(feats.reshape(len(labels), -1), labels, paths)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=result.features, labels=result.labels, paths=np.array(result.paths, dtype=str))
    return result
