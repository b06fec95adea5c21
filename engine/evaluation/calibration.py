"""Calibration: temperature scaling, reliability diagram and expected calibration error.

The one place a run's temperature is fitted (Guo et al. 2017, "On Calibration of
Modern Neural Networks"): evaluation fits it on the validation logits and stores
it with the run; export and prediction read it from there.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _softmax

__all__ = ["fit_temperature", "softmax", "reliability", "expected_calibration_error", "MIN_TEMPERATURE_IMAGES",
           "RELIABILITY_BINS"]

# Temperature fitted on fewer validation images than this overfits; 1.0 is recorded instead.
MIN_TEMPERATURE_IMAGES = 100
RELIABILITY_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of ``logits / temperature``."""
    return _softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = RELIABILITY_BINS) -> dict:
    """Reliability-diagram data: per equal-width confidence bin, images, mean confidence, accuracy; and ECE.

    ECE (Naeini et al. 2015) is the image-weighted mean |accuracy - confidence| over the bins.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; confidence is never below 1/classes > 0.
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_conf[filled])) / max(1, len(confidence)))
    return {
        "edges": edges.round(6).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [float(v) if f else None for v, f in zip(mean_conf, filled)],
        "accuracy": [float(v) if f else None for v, f in zip(accuracy, filled)],
        "ece": ece,
    }


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                               bins: int = RELIABILITY_BINS) -> float:
    p = softmax(logits, temperature)
    return reliability(p.max(axis=1), p.argmax(axis=1) == np.asarray(labels), bins)["ece"]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Temperature scaling: the T minimising validation NLL (scipy's bounded Brent search on log T).

    NLL is convex in 1/T, so the one-dimensional search finds the optimum.
    With too few images, T=1.0 is recorded instead, with the reason.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n < MIN_TEMPERATURE_IMAGES:
        return {"temperature": 1.0, "fitted": False, "images": n,
                "reason": f"only {n} validation images (< {MIN_TEMPERATURE_IMAGES}); "
                          "a fitted temperature would overfit",
                "nll_before": _nll(logits, labels, 1.0) if n else None,
                "ece_before": expected_calibration_error(logits, labels) if n else None}
    result = minimize_scalar(lambda log_t: _nll(logits, labels, float(np.exp(log_t))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5})
    t = round(float(np.exp(result.x)), 4)
    return {"temperature": t, "fitted": True, "images": n, "method": "validation NLL (temperature scaling)",
            "nll_before": _nll(logits, labels, 1.0), "nll_after": _nll(logits, labels, t),
            "ece_before": expected_calibration_error(logits, labels, 1.0),
            "ece_after": expected_calibration_error(logits, labels, t)}
