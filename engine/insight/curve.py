"""The data-efficiency curve: validation accuracy against labelled images per class.

Linear probes on cached frozen features (``engine.features.split_features``),
fitted with one fixed regularisation ``C`` (chosen once by cross-validation on the
full training set) so each of the many small fits costs a fraction of a second.
Each size is drawn several times (a stratified random subset of the training
split); the validation split is always the same. A from-scratch baseline (the
same architecture, random initialisation, trained for a few epochs) at two or
three sizes shows what the pretraining buys. The learning curve fitted to the
means is a power law ``acc(n) = a - b * n**(-c)`` (``scipy.optimize.curve_fit``);
it is extrapolated only when it fits well (R² ≥ 0.95 over at least four sizes).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from engine.training.probe import fit_probe

__all__ = ["CURVE_SIZES", "per_class_subset", "data_efficiency", "flattening_point", "fit_learning_curve",
           "scratch_baseline", "binomial_se"]

CURVE_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
FLAT_GAIN = 0.02  # "flat": labelling up to the largest size gains at most 2 points
GOOD_FIT_R2 = 0.95
Progress = Callable[[str], None]


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def per_class_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` random images of every class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == k))[:n] for k in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _accuracy(fit, features: np.ndarray, labels: np.ndarray) -> float:
    return float((fit.logits(features).argmax(1) == labels).mean())


def data_efficiency(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    num_classes: int, sizes: tuple[int, ...] | None = None, draws: int = 5, C: float | None = None,
                    seed: int = 0, progress: Progress | None = None) -> dict:
    """Probe accuracy on the validation features for each size (images per class) with mean, std, min, max
    over ``draws`` random draws; the size "all" (the whole training split) is always the last point."""
    counts = np.bincount(train_y, minlength=num_classes)
    largest = int(counts.max())
    if C is None:
        C = fit_probe(train_x, train_y, num_classes, seed=seed).C
    sizes = tuple(n for n in (sizes or CURVE_SIZES) if n < largest) + (largest,)
    points = []
    for n in sizes:
        # Once n reaches the smallest class, draws share that class whole; at the largest size all coincide.
        n_draws = 1 if n >= largest else draws
        accs = []
        for d in range(n_draws):
            idx = per_class_subset(train_y, n, np.random.default_rng([seed, n, d]))
            accs.append(_accuracy(fit_probe(train_x[idx], train_y[idx], num_classes, C=C, seed=seed), val_x, val_y))
        a = np.array(accs)
        points.append({"per_class": int(n), "images": int(np.minimum(counts, n).sum()), "draws": len(accs),
                       "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                       "min": float(a.min()), "max": float(a.max()), "accuracies": [round(float(x), 4) for x in a],
                       "se": float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else
                       binomial_se(float(a.mean()), len(val_y))})
        if progress:
            progress(f"curve: {n} per class, mean accuracy {a.mean():.3f}")
    return {"points": points, "C": float(C), "val_images": int(len(val_y)), "chance": 1.0 / num_classes}


def flattening_point(points: list[dict], gain: float = FLAT_GAIN) -> dict:
    """The smallest size from which labelling up to the largest size gains at most ``gain`` (or one
    standard error of the largest point, whichever is larger)."""
    top = points[-1]
    tolerance = max(gain, top["se"])
    for p in points:
        if top["mean"] - p["mean"] <= tolerance:
            flat = p["per_class"] < top["per_class"]
            return {"per_class": p["per_class"], "flat": flat, "tolerance": round(tolerance, 4),
                    "text": (f"flattens at about {p['per_class']} images per class: more labels up to "
                             f"{top['per_class']} gain {100 * (top['mean'] - p['mean']):.1f} points")
                    if flat else "still rising at the largest size: more labels should pay"}
    return {"per_class": top["per_class"], "flat": False, "tolerance": tolerance, "text": "still rising"}


def _power_law(n, a, b, c):
    return a - b * np.power(n, -c)


def fit_learning_curve(points: list[dict], horizon: tuple[int, ...] = (2, 5, 10)) -> dict:
    """Fit ``acc(n) = a - b * n**(-c)`` to the means (weighted by their spread); extrapolate to
    ``horizon`` times the largest size only when the fit is good."""
    from scipy.optimize import curve_fit

    model = "power law acc(n) = a - b * n^(-c), scipy.optimize.curve_fit on the mean accuracies"
    n = np.array([p["per_class"] for p in points], dtype=float)
    y = np.array([p["mean"] for p in points])
    if len(n) < 4:
        return {"model": model, "good": False, "reason": f"only {len(n)} sizes; at least 4 are needed"}
    sigma = np.array([max(p["std"], 0.01) for p in points])
    try:
        (a, b, c), _ = curve_fit(_power_law, n, y, p0=(min(1.0, y.max() + 0.05), max(y.max() - y.min(), 0.05), 0.5),
                                 sigma=sigma, bounds=([0, 0, 0.05], [1, 2, 3]), maxfev=5000)
    except (RuntimeError, ValueError) as exc:
        return {"model": model, "good": False, "reason": f"the fit did not converge ({exc})"}
    resid = y - _power_law(n, a, b, c)
    total = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (resid ** 2).sum() / total) if total > 0 else 0.0
    out = {"model": model, "a": float(a), "b": float(b), "c": float(c), "r2": round(r2, 4),
           "good": bool(r2 >= GOOD_FIT_R2)}
    if out["good"]:
        out["ceiling"] = float(a)
        out["extrapolation"] = [{"per_class": int(n[-1] * k),
                                 "predicted": round(float(_power_law(n[-1] * k, a, b, c)), 4)} for k in horizon]
    else:
        out["reason"] = f"R² {r2:.2f} is below {GOOD_FIT_R2}: no extrapolation"
    return out


def scratch_baseline(dataset, backbone: str, size: int, sizes: list[int], epochs: int = 10, seed: int = 0,
                     batch_size: int = 32, lr: float = 3e-3, progress: Progress | None = None) -> list[dict]:
    """The same architecture from random initialisation, trained ``epochs`` epochs on ``n`` images per
    class for each ``n`` in ``sizes`` (one draw each; the spread shown is the binomial standard error
    of the validation accuracy)."""
    import time

    import torch

    from engine.data.tensors import decode_split
    from engine.models import create_model, get_spec
    from engine.device import resolve_device
    from engine.training.config import TrainConfig
    from engine.training.loop import LoopState, evaluate, train_one_epoch

    classes = dataset.classes
    train = decode_split(dataset, "train", size, classes)
    val = decode_split(dataset, "val", size, classes)
    spec = get_spec(backbone)
    setup = resolve_device("cpu", "off")
    rows = []
    for n in sizes:
        started = time.monotonic()
        torch.manual_seed(seed)
        idx = torch.from_numpy(per_class_subset(train.labels.numpy(), n, np.random.default_rng([seed, n])))
        images, labels = train.images[idx], train.labels[idx]
        model = create_model(backbone, len(classes), pretrained=False, image_size=size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        steps = epochs * max(1, len(labels) // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
        generator = torch.Generator().manual_seed(seed)
        config = TrainConfig(dataset=str(dataset.root), backbone=backbone, mode="scratch", augment="light",
                             batch_size=min(batch_size, len(labels)))
        state = LoopState(optimizer, scheduler, torch.nn.CrossEntropyLoss(), setup, spec.mean, spec.std, generator)
        for _ in range(epochs):
            train_one_epoch(model, images, labels, config, state)
        acc = evaluate(model, val.images, val.labels, setup=setup, batch_size=64, mean=spec.mean,
                       std=spec.std)["val_acc"]
        rows.append({"per_class": int(n), "images": int(len(labels)), "epochs": epochs, "mean": float(acc),
                     "se": binomial_se(float(acc), len(val.labels)), "seconds": round(time.monotonic() - started, 1)})
        if progress:
            progress(f"scratch: {n} per class, {epochs} epochs, accuracy {acc:.3f}")
    return rows
