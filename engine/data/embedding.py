"""An embedding map of a dataset: backbone features projected to 2-D.

Pooled MobileNetV2 features of a capped, stratified sample at a small size,
projected with PCA (or t-SNE). A point whose nearest neighbours in feature
space mostly carry another label is flagged as a possible mislabel. The
result is cached on disk per dataset fingerprint, sample and projection.

The Dataset page computes it in the background (``engine.workflow.start_embedding_map``,
a ``python -m engine inspect --embedding`` task, writing ``POINTS_FILE`` here) and polls
``engine.workflow.embedding_status``; it never runs the backbone in the page script.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.data.dataset import Dataset
from engine.data.images import ImageProblem, load_rgb, resize_center_crop
from engine.workspace import atomic_path, cache_dir

__all__ = ["embedding_map", "embedding_folder", "EMBED_BACKBONE",
           "EMBED_SIZE", "MAX_EMBED_IMAGES", "METHODS", "POINTS_FILE"]

EMBED_BACKBONE = "mobilenet_v2"
EMBED_SIZE = 96
MAX_EMBED_IMAGES = 2000
NEIGHBOURS = 5
METHODS = ("pca", "tsne")
_BATCH = 64
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


@torch.no_grad()
def _features(dataset: Dataset, rows: pd.DataFrame, progress: Callable[[int, int], None] | None) -> np.ndarray:
    from engine.models import create_model, get_spec

    spec = get_spec(EMBED_BACKBONE)
    model = create_model(EMBED_BACKBONE, num_classes=2, pretrained=True).eval()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    feats = []
    paths = list(rows["path"])
    for start in range(0, len(paths), _BATCH):
        batch = []
        for rel in paths[start : start + _BATCH]:
            try:
                batch.append(resize_center_crop(load_rgb(dataset.root / rel), EMBED_SIZE))
            except ImageProblem:  # changed since the scan: a blank stands in
                batch.append(np.zeros((EMBED_SIZE, EMBED_SIZE, 3), np.uint8))
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255)
        feats.append(model.forward_features((x - mean) / std).numpy())
        if progress:
            progress(min(start + _BATCH, len(paths)), len(paths))
    return np.concatenate(feats)


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
    feats = _features(dataset, rows, progress)
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
