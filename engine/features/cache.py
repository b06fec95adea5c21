"""A split's frozen features on disk, keyed by what they depend on.

The key is what the features depend on: the split's images (their paths and sizes,
not their labels) and the backbone's key (its architecture, weights, input size and
normalisation), so a second run, a second mode or a sweep over the same data reuses
the features, and so does a relabelled version of the dataset (a correction from the
label review would otherwise recompute every feature); the labels are read from the
dataset each time. Adding, dropping or replacing an image recomputes the split.
Images are decoded only when the features are not cached. A sample of rows across splits (the
embedding map's) is :func:`rows_features`, keyed by the images' content hashes instead.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.data.dataset import Dataset
from engine.data.tensors import decode_split, decoded_cache_problem, iter_decoded, iter_decoded_rows
from engine.features.extract import FeatureExtractor, backbone_key, feature_extractor
from engine.workspace import atomic_path, cache_dir

__all__ = ["FeatureSet", "split_features", "rows_features", "images_key"]

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


def rows_features(dataset: Dataset, rows: pd.DataFrame, backbone: str, size: int,
                  progress: Callable[[int, int], None] | None = None) -> FeatureSet:
    """The pooled features of some usable ``rows`` of ``dataset``'s manifest (e.g. a sample across splits),
    in their order, from the cache when present. A file broken since the scan is left out (``paths`` says
    which rows have features); ``labels`` index ``dataset.classes``.

    Features depend on the images, the backbone and the size, not on labels, names or order: they are
    stored by content hash (manifest ``hash``) under a key of the set of hashes and the backbone's key, so a
    relabel (a file moved to another class folder) reuses them.
    """
    hashes = [str(h) for h in rows["hash"]]
    digest = hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()[:20]
    folder = cache_dir() / "features"
    path = folder / f"rows-{digest}-{backbone_key(backbone, size)}.npz"
    stored: tuple[np.ndarray, list[str]] | None = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as blob:
                stored = blob["features"], [str(h) for h in blob["hashes"]]
        except Exception:
            path.unlink(missing_ok=True)  # damaged: compute again
    from_cache = stored is not None
    if stored is None:
        run = feature_extractor(backbone, size, images=len(rows))
        hash_of = dict(zip((str(p) for p in rows["path"]), hashes))
        parts: list[np.ndarray] = []
        kept: list[str] = []
        # One decoded chunk in memory at a time; progress counts rows as each chunk's features are done.
        for block in iter_decoded_rows(dataset, rows, size, dataset.classes, progress=progress):
            if len(block):
                parts.append(run(block.images))
                kept.extend(hash_of[p] for p in block.paths)
        features = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)
        stored = features, kept
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, features=features, hashes=np.array(kept, dtype=str))
    features, kept = stored
    at = {h: i for i, h in enumerate(kept)}
    # Paths and labels come from the rows as they are now.
    take = [i for i, h in enumerate(hashes) if h in at]
    class_index = {name: i for i, name in enumerate(dataset.classes)}
    labels = np.array([class_index[label] for label in rows["label"].iloc[take]], dtype=np.int64)
    return FeatureSet(features[[at[hashes[i]] for i in take]].reshape(len(take), -1), labels,
                      [str(p) for p in rows["path"].iloc[take]], cached=from_cache)
