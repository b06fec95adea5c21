"""Out-of-distribution score: distance to the k nearest training features (Sun et al. 2022, "Out-of-
distribution detection with deep nearest neighbors").

Pooled backbone features are L2-normalised; an image's score is the distance to its
k-th nearest training image (scikit-learn ``NearestNeighbors``). The validation
images, which training never saw, give the range of scores of in-distribution
images: a score above their 99th percentile is flagged "unlike the training data".
The reference (training features, validation scores, thresholds) is computed once
per run at evaluation time and saved as ``ood_reference.npz``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["OODReference", "unit_rows", "sample_rows", "stored_rows", "build_reference", "load_reference", "OOD_K",
           "OOD_PERCENTILES", "OOD_FLAG_PERCENTILE", "MAX_REFERENCE_IMAGES"]

OOD_K = 10
OOD_PERCENTILES = (95, 99)
# The flag: beyond what 99 % of validation images scored (so ~1 % of in-distribution images are flagged).
OOD_FLAG_PERCENTILE = 99
# Enough to cover the training distribution; keeps the file and the search small.
MAX_REFERENCE_IMAGES = 10_000


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (cosine geometry; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class OODReference:
    """Training features and the validation-calibrated thresholds of one run."""

    def __init__(self, train_features: np.ndarray, val_scores: np.ndarray, k: int = OOD_K,
                 flag_percentile: int = OOD_FLAG_PERCENTILE):
        from sklearn.neighbors import NearestNeighbors

        # Stored as float16 (the file stays small); scores use the same rounded features.
        self.train_features = unit_rows(train_features).astype(np.float16).astype(np.float32)
        self.k = int(min(k, len(self.train_features)))
        self.val_scores = np.asarray(val_scores, dtype=np.float32)
        self.flag_percentile = int(flag_percentile)
        self.thresholds = {int(p): float(np.percentile(self.val_scores, p)) for p in OOD_PERCENTILES} \
            if len(self.val_scores) else {}
        if self.flag_percentile not in self.thresholds and len(self.val_scores):
            self.thresholds[self.flag_percentile] = float(np.percentile(self.val_scores, self.flag_percentile))
        self._index = NearestNeighbors(n_neighbors=self.k).fit(self.train_features)

    @property
    def threshold(self) -> float:
        return self.thresholds.get(self.flag_percentile, float("inf"))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance of each (unnormalised) feature row to its k-th nearest training feature."""
        if len(features) == 0:
            return np.zeros(0, np.float32)
        distances, _ = self._index.kneighbors(unit_rows(features), n_neighbors=self.k)
        return distances[:, -1].astype(np.float32)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def percentile_of(self, scores: np.ndarray) -> np.ndarray:
        """Share of validation images (in %) scoring at most this: 100 = beyond anything seen in validation."""
        ordered = np.sort(self.val_scores)
        return 100.0 * np.searchsorted(ordered, np.asarray(scores), side="right") / max(1, len(ordered))

    def summary(self) -> dict:
        val_flagged = float(self.flags(self.val_scores).mean()) if len(self.val_scores) else 0.0
        return {"method": f"distance to the {self.k}-th nearest training image in L2-normalised backbone features",
                "k": self.k, "train_images": int(len(self.train_features)),
                "val_images": int(len(self.val_scores)),
                "thresholds": {f"p{p}": t for p, t in sorted(self.thresholds.items())},
                "flag_percentile": self.flag_percentile, "threshold": self.threshold,
                "val_flagged_rate": val_flagged}

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, train_features=self.train_features.astype(np.float16), val_scores=self.val_scores,
                            k=np.int64(self.k), flag_percentile=np.int64(self.flag_percentile))
        tmp.replace(path)


def sample_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Row indices: all ``n`` up to ``limit``, else a seeded sample of ``limit``; sorted (a memory-mapped
    array is read forwards). The OOD reference, the batch test's reference and a fine-tune's scored
    training images are each drawn so."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def stored_rows(n: int, seed: int = 0) -> np.ndarray:
    """Which of ``n`` training rows a reference keeps: all up to ``MAX_REFERENCE_IMAGES``, else a seeded sample."""
    return sample_rows(n, MAX_REFERENCE_IMAGES, seed)


def build_reference(train_features: np.ndarray, val_features: np.ndarray, k: int = OOD_K,
                    seed: int = 0) -> OODReference:
    """Reference from training features, calibrated on the validation features."""
    train_features = np.asarray(train_features, dtype=np.float32)
    train_features = train_features[stored_rows(len(train_features), seed)]
    probe = OODReference(train_features, np.zeros(0, np.float32), k=k)
    return OODReference(train_features, probe.scores(val_features), k=k)


def load_reference(path: Path) -> OODReference | None:
    """The saved reference, or None when the run has not been evaluated (or the file is damaged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as blob:
            return OODReference(blob["train_features"].astype(np.float32), blob["val_scores"], k=int(blob["k"]),
                                flag_percentile=int(blob["flag_percentile"]))
    except (OSError, KeyError, ValueError):
        return None
