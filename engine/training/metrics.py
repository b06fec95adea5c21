"""Classification scores (from confusion matrices, as scikit-learn defines them) and eval.json's report.

Computed here in NumPy rather than with scikit-learn: importing scikit-learn (and SciPy with it)
costs about two seconds on this 2-core host, paid by every training job and quick trial for
three averages of a confusion matrix. ``tests/test_evaluation.py`` checks every score against
scikit-learn's.
"""
from __future__ import annotations

import numpy as np

__all__ = ["classification_report", "prior_correction", "confusion_counts", "scores_from_confusion",
           "headline_scores", "per_class_scores", "stratified_folds", "SCORES"]

SCORES = ("accuracy", "balanced_accuracy", "macro_f1")
# Below this ratio between the largest and smallest training class, prior correction is not shown.
PRIOR_CORRECTION_RATIO = 1.5


def confusion_counts(y_true, y_pred, k: int) -> np.ndarray:
    """``(..., n)`` label arrays -> ``(..., k, k)`` counts (rows: true class, columns: predicted)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    lead = y_true.shape[:-1]
    if y_true.shape[-1] == 0:
        return np.zeros((*lead, k, k), dtype=np.int64)
    codes = (y_true * k + y_pred).reshape(-1, y_true.shape[-1])
    offsets = (np.arange(codes.shape[0]) * k * k)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=codes.shape[0] * k * k)
    return counts.reshape(*lead, k, k)


def scores_from_confusion(cm: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of each ``(..., k, k)`` confusion matrix, vectorised over the leading axes."""
    diag = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
    if metric == "accuracy":
        return diag.sum(-1) / np.maximum(rows.sum(-1), 1)
    if metric == "balanced_accuracy":  # mean recall over the classes present in y_true
        present = rows > 0
        return np.where(present, diag / np.maximum(rows, 1), 0).sum(-1) / np.maximum(present.sum(-1), 1)
    if metric == "macro_f1":  # over all labels, 0 where a class is neither true nor predicted (zero_division=0)
        return (2 * diag / np.maximum(rows + cols, 1)).mean(-1)
    raise ValueError(f"unknown metric {metric!r}")


def headline_scores(y_true, y_pred, k: int) -> dict:
    """Accuracy, balanced accuracy and macro-F1 (over ``k`` classes) as floats; zeros for no images."""
    if not len(y_true):
        return dict.fromkeys(SCORES, 0.0)
    cm = confusion_counts(y_true, y_pred, k)
    return {name: float(scores_from_confusion(cm, name)) for name in SCORES}


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class of one confusion matrix (0 where undefined)."""
    diag = np.diagonal(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.where(predicted > 0, diag / np.maximum(predicted, 1), 0.0)
    recall = np.where(support > 0, diag / np.maximum(support, 1), 0.0)
    f1 = 2 * diag / np.maximum(support + predicted, 1)
    return precision, recall, f1, support


def stratified_folds(y, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs: each class's images shuffled and dealt round the folds in turn."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = np.arange(len(idx)) % n_folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def prior_correction(y_true: np.ndarray, logits: np.ndarray, train_counts) -> dict:
    """What logit adjustment by the training class frequencies does (Menon et al. 2021).

    Subtracting ``log prior`` from the logits at prediction time turns a model
    trained for accuracy into one aimed at balanced accuracy, with no retraining.
    Both sets of figures are returned so the user chooses the trade-off.
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    prior = np.clip(counts / counts.sum(), 1e-12, None)
    adjusted = np.asarray(logits) - np.log(prior)
    return {"as_trained": headline_scores(y_true, np.asarray(logits).argmax(1), len(counts)),
            "prior_corrected": headline_scores(y_true, adjusted.argmax(1), len(counts)),
            "log_prior": [float(v) for v in np.log(prior)]}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, logits: np.ndarray, classes: list[str],
                          train_counts=None) -> dict:
    """Headline metrics (accuracy, balanced accuracy, macro-F1), per-class table, confusion
    matrix; with ``train_counts`` of imbalanced classes, the prior-corrected figures too."""
    k = len(classes)
    cm = confusion_counts(y_true, y_pred, k) if len(y_true) else np.zeros((k, k), dtype=np.int64)
    precision, recall, f1, support = per_class_scores(cm)
    probs = _softmax(logits) if len(logits) else np.zeros((0, k))
    report = {
        "classes": classes,
        "num_images": int(len(y_true)),
        **headline_scores(y_true, y_pred, k),
        "confusion_matrix": cm.tolist(),
        "per_class": [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "y_true": [int(v) for v in y_true],
        "y_pred": [int(v) for v in y_pred],
        "confidence": [float(v) for v in probs.max(axis=1)] if len(probs) else [],
    }
    if train_counts is not None and len(logits):
        counts = np.asarray(train_counts)
        if counts.min() > 0 and counts.max() / counts.min() >= PRIOR_CORRECTION_RATIO:
            report["prior_correction"] = prior_correction(y_true, logits, counts)
    return report
