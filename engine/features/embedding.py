"""An embedding map of a dataset: backbone features projected to 2-D.

Pooled MobileNetV2 features of a capped, stratified sample at a small size (from
:func:`engine.features.rows_features`, the one feature extractor and its cache), projected
with PCA (or t-SNE). A point whose nearest neighbours in feature space mostly carry another
label is flagged as a possible mislabel. The map is cached on disk per dataset fingerprint,
sample and projection; the features below it per image content, so a relabel reuses them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.dataset import Dataset
from engine.features.cache import rows_features
from engine.workspace import atomic_path, cache_dir

__all__ = ["embedding_map", "embedding_folder", "EMBED_BACKBONE", "EMBED_SIZE", "MAX_EMBED_IMAGES", "METHODS",
           "POINTS_FILE"]

EMBED_BACKBONE = "mobilenet_v2"
EMBED_SIZE = 96
MAX_EMBED_IMAGES = 2000
NEIGHBOURS = 5
METHODS = ("pca", "tsne")
POINTS_FILE = "points.parquet"


def embedding_folder(dataset: Dataset, method: str = "pca", max_images: int = MAX_EMBED_IMAGES, seed: int = 0) -> Path:
    """The cache folder of one map: its points (``points.parquet``) and, when computed in the background, the task."""
    key = f"{dataset.fingerprint()}-{EMBED_BACKBONE}-{EMBED_SIZE}-{max_images}-{method}-{seed}"
    return cache_dir() / "embeddings" / key


def _sample(dataset: Dataset, max_images: int, seed: int) -> pd.DataFrame:
    usable = dataset.usable
    if len(usable) <= max_images:
        return usable
    frac = max_images / len(usable)
    # Stratified by class so small classes stay on the map.
    parts = [g.sample(n=max(1, int(round(len(g) * frac))), random_state=seed) for _, g in usable.groupby("label")]
    return pd.concat(parts).head(max_images)


def embedding_map(dataset: Dataset, max_images: int = MAX_EMBED_IMAGES, method: str = "pca", seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Columns ``path, label, split, x, y, neighbour_agreement, suspect``.

    ``neighbour_agreement`` is the share of a point's ``NEIGHBOURS`` nearest
    neighbours (cosine, in feature space) with its own label; ``suspect`` is
    True when most of them carry another label.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    cache = embedding_folder(dataset, method, max_images, seed) / POINTS_FILE
    if cache.is_file():
        try:
            return pd.read_parquet(cache)
        except Exception:
            cache.unlink(missing_ok=True)
    rows = _sample(dataset, max_images, seed).reset_index(drop=True)
    found = rows_features(dataset, rows, EMBED_BACKBONE, EMBED_SIZE, progress=progress)
    rows = rows.set_index("path").loc[found.paths].reset_index()  # a file broken since the scan is left out
    feats = found.features
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if method == "tsne" and len(rows) > 5:
        xy = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), random_state=seed,
                  init="pca").fit_transform(feats)
    else:
        xy = PCA(n_components=2, random_state=seed).fit_transform(feats)
    k = min(NEIGHBOURS, len(rows) - 1)
    labels = rows["label"].to_numpy()
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(feats).kneighbors(feats)
    agree = (labels[idx[:, 1:]] == labels[:, None]).mean(axis=1)
    result = pd.DataFrame({"path": rows["path"], "label": rows["label"], "split": rows["split"],
                           "x": xy[:, 0], "y": xy[:, 1], "neighbour_agreement": agree, "suspect": agree < 0.5})
    with atomic_path(cache) as tmp:
        result.to_parquet(tmp, index=False)
    return result
