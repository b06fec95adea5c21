"""Classification metrics with 95 % bootstrap confidence intervals (SciPy's bootstrap over the
scores of :mod:`engine.training.metrics`, which match scikit-learn's definitions)."""
from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

from engine.training.metrics import SCORES, confusion_counts, per_class_scores, scores_from_confusion

__all__ = ["HEADLINE_METRICS", "headline_metrics", "bootstrap_ci", "per_class_table", "confusion"]

BOOTSTRAP_RESAMPLES = 1000
HEADLINE_METRICS = SCORES


def _statistic(metric: str, k: int):
    """The metric of many resamples at once (``scipy.stats.bootstrap(vectorized=True)``)."""

    def statistic(y_true, y_pred, axis=-1):
        return scores_from_confusion(confusion_counts(np.moveaxis(y_true, axis, -1), np.moveaxis(y_pred, axis, -1),
                                                      k), metric)

    return statistic


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "accuracy", confidence: float = 0.95,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, labels: list[int] | None = None) -> dict:
    """Point estimate and percentile bootstrap interval of ``metric`` (paired resampling
    of images with ``scipy.stats.bootstrap``)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if metric not in HEADLINE_METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    k = len(labels) if labels is not None else int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    value = float(scores_from_confusion(confusion_counts(y_true, y_pred, k), metric)) if len(y_true) else 0.0
    if len(y_true) < 2 or (np.all(y_true == y_true[0]) and np.all(y_pred == y_pred[0])):
        return {"value": value, "low": value, "high": value, "confidence": confidence, "resamples": 0}
    res = bootstrap((y_true, y_pred), _statistic(metric, k), paired=True, vectorized=True, n_resamples=n_resamples,
                    confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return {"value": value, "low": float(low), "high": float(high), "confidence": confidence,
            "resamples": n_resamples, "method": "percentile bootstrap over images"}


def headline_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                     n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    labels = list(range(num_classes))
    return {name: bootstrap_ci(y_true, y_pred, name, n_resamples=n_resamples, seed=seed, labels=labels)
            for name in HEADLINE_METRICS}


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    precision, recall, f1, support = per_class_scores(confusion_counts(y_true, y_pred, len(classes)))
    return [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Counts (rows: true class, columns: predicted) and the row-normalised matrix (recall on the diagonal)."""
    counts = confusion_counts(y_true, y_pred, num_classes)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return {"counts": counts.astype(int).tolist(), "row_normalised": rows.round(6).tolist()}
