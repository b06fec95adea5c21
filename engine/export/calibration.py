"""Calibration of the exported probabilities: temperature scaling on the validation split."""
from __future__ import annotations

import numpy as np

__all__ = ["fit_temperature", "nll", "ece", "MIN_TEMPERATURE_IMAGES"]

# Temperature fitted on fewer validation images than this overfits; record 1.0.
MIN_TEMPERATURE_IMAGES = 100


def nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / t)."""
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def ece(logits: np.ndarray, labels: np.ndarray, t: float, bins: int = 15) -> float:
    """Expected calibration error of softmax(logits / t) over ``bins`` equal-width confidence bins."""
    z = logits / t
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(float((pred[m] == labels[m]).mean()) - float(conf[m].mean()))
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Temperature scaling (Guo et al. 2017): the T minimising validation NLL.

    NLL is convex in 1/T, so a golden-section search on log T finds it.
    With too few images, T=1.0 is recorded instead, with the reason.
    """
    n = len(labels)
    if n < MIN_TEMPERATURE_IMAGES:
        return {"temperature": 1.0, "fitted": False, "images": n,
                "reason": f"only {n} validation images (< {MIN_TEMPERATURE_IMAGES}); a fitted temperature would overfit"}
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if nll(logits, labels, np.exp(a)) < nll(logits, labels, np.exp(b)):
            hi = b
        else:
            lo = a
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    t = float(np.exp((lo + hi) / 2))
    return {"temperature": round(t, 4), "fitted": True, "images": n, "method": "validation NLL (temperature scaling)",
            "nll_before": nll(logits, labels, 1.0), "nll_after": nll(logits, labels, round(t, 4)),
            "ece_before": ece(logits, labels, 1.0), "ece_after": ece(logits, labels, round(t, 4))}
