"""Classification metrics with 95 % bootstrap confidence intervals (scikit-learn + scipy)."""
from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, \
    precision_recall_fscore_support

__all__ = ["HEADLINE_METRICS", "headline_metrics", "bootstrap_ci", "per_class_table", "confusion"]

BOOTSTRAP_RESAMPLES = 1000


def _macro_f1(y_true, y_pred, labels=None):
    return f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)


HEADLINE_METRICS = {
    "accuracy": accuracy_score,
    "balanced_accuracy": balanced_accuracy_score,
    "macro_f1": _macro_f1,
}


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices of a batch of resamples: ``(..., n)`` label arrays -> ``(..., k, k)`` counts."""
    lead = y_true.shape[:-1]
    codes = (y_true * k + y_pred).reshape(-1, y_true.shape[-1])
    offsets = (np.arange(codes.shape[0]) * k * k)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=codes.shape[0] * k * k)
    return counts.reshape(*lead, k, k)


def _vectorised(metric: str, k: int):
    """The metric as scikit-learn defines it, computed from confusion matrices for many resamples at once
    (``scipy.stats.bootstrap(vectorized=True)``); checked against scikit-learn in the tests."""

    def statistic(y_true, y_pred, axis=-1):
        cm = _confusions(np.moveaxis(y_true, axis, -1), np.moveaxis(y_pred, axis, -1), k)
        diag = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
        rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
        if metric == "accuracy":
            return diag.sum(-1) / rows.sum(-1)
        if metric == "balanced_accuracy":  # mean recall over the classes present in y_true
            present = rows > 0
            return np.where(present, diag / np.maximum(rows, 1), 0).sum(-1) / np.maximum(present.sum(-1), 1)
        # macro-F1 over all labels, 0 where a class is neither true nor predicted (zero_division=0)
        return (2 * diag / np.maximum(rows + cols, 1)).mean(-1)

    return statistic


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "accuracy", confidence: float = 0.95,
                 n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, labels: list[int] | None = None) -> dict:
    """Point estimate (scikit-learn) and percentile bootstrap interval of ``metric`` (paired resampling
    of images with ``scipy.stats.bootstrap``)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if metric not in HEADLINE_METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    k = len(labels) if labels is not None else int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    fn = HEADLINE_METRICS[metric]
    value = float(fn(y_true, y_pred, labels) if metric == "macro_f1" else fn(y_true, y_pred))
    if len(y_true) < 2 or (np.all(y_true == y_true[0]) and np.all(y_pred == y_pred[0])):
        return {"value": value, "low": value, "high": value, "confidence": confidence, "resamples": 0}
    res = bootstrap((y_true, y_pred), _vectorised(metric, k), paired=True, vectorized=True, n_resamples=n_resamples,
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
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(classes))), zero_division=0)
    return [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Counts (rows: true class, columns: predicted) and the row-normalised matrix (recall on the diagonal)."""
    labels = list(range(num_classes))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    rows = confusion_matrix(y_true, y_pred, labels=labels, normalize="true")
    return {"counts": counts.astype(int).tolist(), "row_normalised": rows.round(6).tolist()}
