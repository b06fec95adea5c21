"""The linear probe: a multinomial logistic regression fitted to convergence on frozen features.

Full-batch L-BFGS in torch (the objective scikit-learn's ``LogisticRegression``
minimises: mean cross-entropy plus ``||W||^2 / (2 C n)``) on standardised
features, with the regularisation strength ``C`` chosen by stratified 3-fold
cross-validation on the training features only, each fold's path warm-started
from the strongest regularisation down. (``scaling="global"``, one scale for all
channels that keeps the backbone's own geometry, can be asked for; cross-validating
it too doubled the cost without a consistent gain in ``bench recipe``.) Deterministic and seconds on CPU. The fitted
model is folded into an ``nn.Linear`` so it *is* the run's head: export, predict
and the fine-tune's head warm-up all use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.data.health import inverse_frequency_weights
from engine.training.metrics import confusion_counts, scores_from_confusion, stratified_folds

__all__ = ["ProbeFit", "fit_probe", "C_GRID"]

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SCALINGS = ("standardise", "global")


@dataclass
class ProbeFit:
    weight: np.ndarray  # (classes, D), for raw features
    bias: np.ndarray  # (classes,)
    C: float
    scaling: str
    cv_accuracy: float | None  # mean cross-validated accuracy of the chosen setting; None without CV
    cv_table: list[dict]

    def load_into(self, head: nn.Linear) -> None:
        """Make ``head`` this probe (the same logits for the same features)."""
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.weight).to(head.weight))
            head.bias.copy_(torch.from_numpy(self.bias).to(head.bias))

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias

    def summary(self) -> dict:
        return {"C": self.C, "scaling": self.scaling, "cv_accuracy": self.cv_accuracy, "cv": self.cv_table}


def _scaler(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with z = (x - shift) / scale."""
    mean = x.mean(0)
    if scaling == "standardise":
        std = x.std(0)
        return mean, torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean, x.std(0).mean().clamp_min(1e-6).expand_as(mean)


def _lbfgs(z: torch.Tensor, y: torch.Tensor, k: int, C: float, class_weight: torch.Tensor | None,
           start: tuple[torch.Tensor, torch.Tensor] | None, max_iter: int, tol: float):
    n, d = z.shape
    w = (torch.zeros(k, d) if start is None else start[0].clone()).requires_grad_()
    b = (torch.zeros(k) if start is None else start[1].clone()).requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-9,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, weight=class_weight) + (w * w).sum() / (2 * C * n)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, balance: str = "none",
              C: float | None = None, scaling: str | None = None, seed: int = 0) -> ProbeFit:
    """Fit the probe on training features; ``C``/``scaling`` left ``None`` are cross-validated (see _fit)."""
    # L-BFGS is thousands of small vector operations: with several intra-op threads each one waits
    # at a barrier, and on a busy host (other jobs, other visitors) the waits dominate. Measured on
    # this 2-core host while other work ran: 67 s on two threads for a fit one thread does in seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(features, labels, num_classes, balance, C, scaling, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(features: np.ndarray, labels: np.ndarray, num_classes: int, balance: str, C: float | None,
         scaling: str | None, seed: int) -> ProbeFit:
    """``balance``: ``none`` (plain likelihood), ``weights`` or ``sampler`` (for a
    full-batch fit, sampling classes uniformly and weighting them inversely to
    their frequency optimise the same objective, so both use balanced weights;
    the cross-validation then scores balanced accuracy).
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y_np = np.asarray(labels, dtype=np.int64)
    y = torch.from_numpy(y_np)
    k = num_classes
    counts = np.bincount(y_np, minlength=k)
    class_weight = None
    if balance != "none":
        class_weight = torch.tensor(inverse_frequency_weights(counts), dtype=torch.float32)
    metric = "balanced_accuracy" if balance != "none" else "accuracy"
    grid_c = C_GRID if C is None else (C,)
    grid_s = SCALINGS[:1] if scaling is None else (scaling,)
    n_folds = int(min(3, counts[counts > 0].min()))
    table: list[dict] = []
    if (len(grid_c) > 1 or len(grid_s) > 1) and n_folds >= 2:
        folds = stratified_folds(y_np, n_folds, seed)
        for s in grid_s:
            scores = np.zeros((len(folds), len(grid_c)))
            for f, (tr, va) in enumerate(folds):
                shift, scale = _scaler(x[tr], s)
                z_tr, z_va = (x[tr] - shift) / scale, (x[va] - shift) / scale
                start = None
                for j, c in enumerate(grid_c):  # strongest regularisation first, each fit warm-starts the next
                    start = _lbfgs(z_tr, y[tr], k, c, class_weight, start, max_iter=100, tol=1e-3)
                    pred = (z_va @ start[0].T + start[1]).argmax(1).numpy()
                    scores[f, j] = scores_from_confusion(confusion_counts(y_np[va], pred, k), metric)
            table += [{"scaling": s, "C": c, "cv_score": round(float(v), 4)} for c, v in zip(grid_c, scores.mean(0))]
        # Ties (within 0.1 point) go to the stronger regularisation, standardised first.
        best = max(table, key=lambda r: (round(r["cv_score"], 3), -r["C"]))
        C, scaling, cv_accuracy = best["C"], best["scaling"], best["cv_score"]
    else:
        C, scaling, cv_accuracy = grid_c[0] if C is None else C, grid_s[0], None
        if len(grid_c) > 1:
            C = 0.1
    shift, scale = _scaler(x, scaling)
    w, b = _lbfgs((x - shift) / scale, y, k, C, class_weight, None, max_iter=500, tol=1e-5)
    # Fold the scaling into the head: W z + b with z = (x - shift) / scale.
    weight = w / scale
    bias = b - weight @ shift
    absent = torch.from_numpy(counts == 0)
    bias[absent] = -1e4  # a class with no training image is never predicted
    return ProbeFit(weight.numpy().astype(np.float32), bias.numpy().astype(np.float32), float(C), scaling,
                    cv_accuracy, table)
