"""Validation metrics as stored in eval.json."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

__all__ = ["classification_report", "prior_correction"]

# Below this ratio between the largest and smallest training class, prior correction is not shown.
PRIOR_CORRECTION_RATIO = 1.5


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _headline(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> dict:
    if not len(y_true):
        return {"accuracy": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0}
    return {"accuracy": float((y_true == y_pred).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))}


def prior_correction(y_true: np.ndarray, logits: np.ndarray, train_counts) -> dict:
    """What logit adjustment by the training class frequencies does (Menon et al. 2021).

    Subtracting ``log prior`` from the logits at prediction time turns a model
    trained for accuracy into one aimed at balanced accuracy, with no retraining.
    Both sets of figures are returned so the user chooses the trade-off.
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    prior = np.clip(counts / counts.sum(), 1e-12, None)
    labels = list(range(len(counts)))
    adjusted = np.asarray(logits) - np.log(prior)
    return {"as_trained": _headline(y_true, np.asarray(logits).argmax(1), labels),
            "prior_corrected": _headline(y_true, adjusted.argmax(1), labels),
            "log_prior": [float(v) for v in np.log(prior)]}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, logits: np.ndarray, classes: list[str],
                          train_counts=None) -> dict:
    """Headline metrics (accuracy, balanced accuracy, macro-F1), per-class table, confusion
    matrix; with ``train_counts`` of imbalanced classes, the prior-corrected figures too."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    probs = _softmax(logits) if len(logits) else np.zeros((0, len(classes)))
    report = {
        "classes": classes,
        "num_images": int(len(y_true)),
        **_headline(y_true, y_pred, labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
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
