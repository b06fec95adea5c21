"""Which images are probably mislabelled: confident learning on the probe's out-of-fold probabilities.

The frozen backbone's features (cached, see :mod:`engine.features`) feed a cross-validated linear probe
whose out-of-fold probabilities (:mod:`engine.dataloop.oof`) go to cleanlab's ``find_label_issues``
(confident learning, Northcutt et al. 2021): an image is flagged when the probe, never fitted on it,
confidently puts it in another class than its label, with the per-class thresholds estimated from the
data, and gave its label at most a ``MAX_GIVEN_PROBABILITY`` chance. Duplicate pairs that carry
different labels, from the health report's own duplicate search, are flagged too: one of each pair is
wrong whatever the probe thinks. Every flagged image has the class the probe suggests and a score, one
minus the probe's out-of-fold probability of the given label (1 = surely wrong), and the list is worst
first.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.data.dataset import Dataset
from engine.data.health import exact_duplicates, near_duplicates
from engine.dataloop.oof import out_of_fold_probabilities
from engine.errors import UserError
from engine.features import split_features
from engine.models import get_spec

__all__ = ["LabelIssues", "ISSUE_COLUMNS", "find_label_issues", "flag_by_confident_learning", "issue_splits"]

ISSUE_COLUMNS = ["path", "split", "label", "suggested", "score", "reason"]
# cleanlab's per-class pruning finds nearly every planted flip, but also the clean images the probe gets
# wrong, which on a set it classifies at 85 % are as many as the flips. Of those candidates, keep the ones
# whose label the (temperature-scaled) out-of-fold probe gives at most this chance. Measured on Fashion-MNIST
# with 10 % of labels flipped (3 seeds): prune_by_noise_rate alone P 0.51 / R 0.76; prune_by_class alone
# 0.57 / 0.93; with this cut-off 0.82 / 0.83 (README, "Data loop", for `bench labels`).
FILTER_BY = "prune_by_class"
MAX_GIVEN_PROBABILITY = 0.05
Progress = Callable[[int, int, str], None]


@dataclass
class LabelIssues:
    issues: pd.DataFrame  # ISSUE_COLUMNS, worst first
    classes: list[str]
    checked: int  # images looked at
    seconds: float
    fingerprint: str  # the dataset version they were found in

    def records(self) -> list[dict]:
        return [{**r, "score": round(float(r["score"]), 4)} for r in self.issues.to_dict("records")]


def flag_by_confident_learning(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Boolean mask of the labels cleanlab's confident learning calls issues, given out-of-fold ``probs``, and
    whose out-of-fold probability is at most ``MAX_GIVEN_PROBABILITY``."""
    from cleanlab.filter import find_label_issues as cleanlab_issues  # about 1 s to import: only when used

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    present = np.unique(labels)
    # cleanlab wants every column to be a class some label uses: score within the classes present.
    column = {c: i for i, c in enumerate(present)}
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    mask = cleanlab_issues(np.vectorize(column.get)(labels), sub, filter_by=FILTER_BY)
    given = probs[np.arange(len(labels)), labels]
    return np.asarray(mask, dtype=bool) & (given <= MAX_GIVEN_PROBABILITY)


def issue_splits(dataset: Dataset) -> list[str]:
    """The splits whose labels are checked: every split the dataset has (a wrong validation label misleads
    the choice of model as surely as a wrong training label misleads the model)."""
    return [s for s in ("train", "val", "test") if (dataset.usable["split"] == s).any()]


def _conflicting_duplicates(dataset: Dataset) -> dict[str, str]:
    """path -> why, for both images of every exact or near duplicate pair whose labels differ."""
    why: dict[str, str] = {}
    for pairs, kind in ((exact_duplicates(dataset), "exact"), (near_duplicates(dataset)[0], "near")):
        for r in pairs[pairs["kind"] == "conflicting_labels"].itertuples():
            why.setdefault(r.path, f"{kind} duplicate of {r.other} labelled {r.other_label}")
            why.setdefault(r.other, f"{kind} duplicate of {r.path} labelled {r.label}")
    return why


def find_label_issues(dataset: Dataset, backbone: str = "mobilenet_v2", image_size: int | None = None,
                      progress: Progress | None = None, seed: int = 0) -> LabelIssues:
    """The suspected label errors of ``dataset`` (every split), worst first."""
    start = time.perf_counter()
    size = int(image_size or get_spec(backbone).input_size)
    classes = dataset.classes
    parts = [split_features(dataset, split, backbone, size, classes, progress=progress)
             for split in issue_splits(dataset)]
    features = np.concatenate([p.features for p in parts])
    labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
    paths = [path for p in parts for path in p.paths]
    splits = [split for split, p in zip(issue_splits(dataset), parts) for _ in range(len(p))]
    if len(labels) < 2 * len(classes):
        raise UserError(f"{len(labels)} images are too few to check the labels of {len(classes)} classes; "
                        "give each class at least two images")
    probs = out_of_fold_probabilities(features, labels, len(classes), seed=seed)
    flagged = flag_by_confident_learning(labels, probs)
    score = 1.0 - probs[np.arange(len(labels)), labels]
    suggested = probs.argmax(axis=1)
    duplicates = _conflicting_duplicates(dataset)
    rows = []
    for i, path in enumerate(paths):
        dup = duplicates.get(path)
        if not (flagged[i] or dup):
            continue
        reasons = ["the probe, never fitted on it, puts it in another class"] if flagged[i] else []
        reason = "; ".join(reasons + ([dup] if dup else []))
        rows.append({"path": path, "split": splits[i], "label": classes[labels[i]],
                     "suggested": classes[suggested[i]], "score": float(score[i]), "reason": reason})
    issues = pd.DataFrame(rows, columns=ISSUE_COLUMNS).sort_values("score", ascending=False, kind="stable")
    return LabelIssues(issues.reset_index(drop=True), classes, len(labels), time.perf_counter() - start,
                       dataset.fingerprint())
