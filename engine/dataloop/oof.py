"""Out-of-fold class probabilities from the linear probe: each image scored by a probe that never saw it.

Confident learning needs, for every labelled image, the model's belief about it from a model not fitted
on its (possibly wrong) label. The regularisation is chosen once by the probe's own cross-validation on
all images; then a probe with that setting is fitted on K-1 folds and scores the K-th, K times. The
out-of-fold logits are then temperature-scaled (one T minimising their NLL against the given labels): a
probe on a few hundred images is strongly regularised and under-confident, one on thousands can be
over-confident, and the label check compares these probabilities with a fixed cut-off.
"""
from __future__ import annotations

import numpy as np

from engine.evaluation.calibration import fit_temperature, softmax
from engine.training.metrics import stratified_folds
from engine.training.probe import fit_probe

__all__ = ["out_of_fold_probabilities"]

DEFAULT_FOLDS = 5


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                              folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """(N, num_classes) probabilities, row i from a probe fitted without image i.

    ``folds`` is lowered to the smallest class's count (at least 2); a class with one image is scored by
    probes that never saw that class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    k = int(max(2, min(folds, present.min() if len(present) else 2)))
    chosen = fit_probe(features, labels, num_classes, seed=seed)
    logits = np.zeros((len(labels), num_classes))
    for train, held_out in stratified_folds(labels, k, seed):
        fit = fit_probe(features[train], labels[train], num_classes, C=chosen.C, scaling=chosen.scaling, seed=seed)
        logits[held_out] = fit.logits(features[held_out])
    return softmax(logits, fit_temperature(logits, labels)["temperature"])
