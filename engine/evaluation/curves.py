"""Curves read from a run: the overfitting reading over epochs and the confidence-threshold trade-off."""
from __future__ import annotations

import numpy as np

__all__ = ["overfitting", "threshold_curve", "threshold_point"]


def overfitting(metrics: list[dict], patience: int | None = None) -> dict:
    """Train/validation loss per epoch, their gap, the best epoch, and a one-line reading."""
    rows = [m for m in metrics if "val_loss" in m and "epoch" in m]
    if not rows:
        return {"epochs": [], "reading": "no epochs recorded yet"}
    epochs = [int(m["epoch"]) for m in rows]
    train = [float(m["train_loss"]) if m.get("train_loss") is not None else None for m in rows]
    val = [float(m["val_loss"]) for m in rows]
    gap = [None if t is None else v - t for t, v in zip(train, val)]
    best_i = int(np.argmin(val))
    best, last = epochs[best_i], epochs[-1]
    since = last - best
    final_gap = gap[-1]
    first_gap = next((g for g in gap if g is not None), None)
    val_acc = [m.get("val_acc") for m in rows]
    probe = rows[-1].get("probe") if len(rows) == 1 else None
    if probe:
        reading = (f"a linear probe fitted in one step (regularisation C={probe.get('C')} chosen by cross-validation): "
                   f"no epochs to stop early; training loss {train[-1]:.2f} vs validation {val[-1]:.2f}")
        if final_gap is not None and final_gap > 0.25:
            reading += ": stronger regularisation or more data would narrow the gap"
    elif len(rows) == 1:
        reading = "one epoch only: train longer to see whether validation keeps improving"
    elif since == 0:
        reading = (f"validation was still improving at the last epoch ({last}): more epochs or a higher "
                   "learning rate may help")
    elif since >= max(2, len(rows) // 5):
        reading = (f"validation stopped improving at epoch {best} of {last}: fewer epochs (or early stopping) "
                   "or stronger augmentation")
    else:
        reading = f"validation loss was lowest at epoch {best} of {last}, close to the end: the schedule fits"
    if final_gap is not None and first_gap is not None and final_gap > 0.25 and final_gap > 2 * max(first_gap, 0.05):
        reading += f"; the train/validation loss gap grew to {final_gap:.2f}, a sign of overfitting"
    return {"epochs": epochs, "train_loss": train, "val_loss": val, "gap": gap, "val_acc": val_acc,
            "best_epoch": best, "last_epoch": last, "epochs_since_best": since, "final_gap": final_gap,
            "reading": reading}


def threshold_curve(confidence: np.ndarray, correct: np.ndarray, steps: int = 101) -> dict:
    """For thresholds 0..1: coverage (share of images answered) and precision of the answered ones.

    An image whose top probability is below the threshold is answered "unsure".
    Precision over the answered images is their accuracy (selective classification).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    thresholds = np.linspace(0.0, 1.0, steps)
    answered = confidence[None, :] >= thresholds[:, None]
    kept = answered.sum(axis=1)
    right = (answered & correct[None, :]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(kept > 0, right / np.maximum(kept, 1), np.nan)
    n = max(1, len(confidence))
    return {"threshold": thresholds.round(4).tolist(), "coverage": (kept / n).tolist(),
            "precision": [None if np.isnan(p) else float(p) for p in precision], "answered": kept.astype(int).tolist(),
            "images": int(len(confidence))}


def threshold_point(curve: dict, threshold: float) -> dict:
    """The curve's values at the nearest threshold at or below ``threshold``."""
    t = np.asarray(curve["threshold"])
    i = max(0, int(np.searchsorted(t, threshold + 1e-9, side="right")) - 1)
    return {"threshold": float(t[i]), "coverage": curve["coverage"][i], "precision": curve["precision"][i],
            "answered": curve["answered"][i]}
