"""Which unlabelled images to ask the analyst for next.

Every strategy sees the same things: the frozen features of the pool, which of them
are labelled already, and the current probe's class probabilities for the rest.

* ``random``: uniformly, the baseline any choice must beat;
* ``margin``: the smallest gap between the top two probabilities (uncertainty sampling);
* ``kcenter``: greedy k-center on L2-normalised features, each pick the image farthest from
  everything labelled or picked (diversity, the core-set choice of Sener & Savarese 2018);
* ``margin-kcenter``: k-center among the ``MARGIN_POOL_FACTOR x batch`` most uncertain images,
  so one batch is not ten near-copies of the same confusing image;
* ``typical``: k-means of the whole pool into (labelled + batch) clusters; the image nearest the
  centre of each of the largest clusters that hold no label yet (TypiClust, Hacohen et al. 2022:
  with few labels, covering the dense regions beats asking about the odd ones);
* ``badge``: k-means++ seeding on gradient embeddings (probabilities minus the predicted one-hot,
  times the features; Ash et al. 2020): uncertain and diverse at once;
* ``typical-margin``: ``typical`` while there are fewer than ``SWITCH_PER_CLASS`` labels per class, then
  ``margin`` (Hacohen et al.'s finding: typicality pays at the smallest budgets, uncertainty after);
* ``typical-badge``: the same switch, then ``badge``.

``DEFAULT_STRATEGY`` is the one ``bench active`` measured best (README, "Active selection").
"""
from __future__ import annotations

import numpy as np

__all__ = ["STRATEGIES", "DEFAULT_STRATEGY", "select_batch", "margins"]

STRATEGIES = ("random", "margin", "kcenter", "margin-kcenter", "typical", "badge", "typical-margin", "typical-badge")
# Chosen from `python -m engine bench active digits fashion-mnist fashion-mnist-imbalanced textures-224 garments-224
# --rounds 24 --seeds 5` (64 px, 2026-12-08; README table): typical-margin needed 64/76/36/50 % of random's labels
# (BADGE 64/80/52/40 %) and is the one strategy never worse than random beyond the interval on any set, in this run
# and the 3-seed ones before it; BADGE fell behind on garments-224 (far from ImageNet, a 40 % probe), margin and
# k-center on digits, Fashion-MNIST or garments-224.
DEFAULT_STRATEGY = "typical-margin"
MARGIN_POOL_FACTOR = 4
SWITCH_PER_CLASS = 4


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (small = the model hesitates between two classes)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[1] < 2:
        return np.ones(len(probs), np.float32)
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _kcenter(features: np.ndarray, labelled: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center: ``k`` of ``candidates``, each the farthest from the labelled set and earlier picks."""
    from engine.evaluation.ood import unit_rows  # here, not at the top: the CLI's parser reads this module

    z = unit_rows(features)
    cand = z[candidates]
    if len(labelled):
        # Squared distance on unit vectors is 2 - 2 cos; chunks keep the (candidates x labelled) block small.
        nearest = np.full(len(candidates), np.inf, np.float32)
        for start in range(0, len(labelled), 1024):
            sims = cand @ z[labelled[start:start + 1024]].T
            nearest = np.minimum(nearest, (2 - 2 * sims).min(axis=1))
    else:
        nearest = np.full(len(candidates), np.inf, np.float32)
        nearest[0] = -1.0  # no labels yet: start from the first candidate
    picks: list[int] = []
    for _ in range(min(k, len(candidates))):
        j = int(np.argmax(nearest))
        picks.append(j)
        nearest = np.minimum(nearest, 2 - 2 * cand @ cand[j])
        nearest[picks] = -np.inf
    return candidates[np.asarray(picks, dtype=np.int64)]


def _reduced(features: np.ndarray, dims: int = 64) -> np.ndarray:
    """Unit rows projected on their first ``dims`` principal axes (k-means and BADGE stay cheap)."""
    from engine.evaluation.ood import unit_rows

    z = unit_rows(features)
    z = z - z.mean(0)
    if z.shape[1] <= dims:
        return z
    _, _, vt = np.linalg.svd(z[:: max(1, len(z) // 2000)], full_matrices=False)
    return z @ vt[:dims].T


def _typical(features: np.ndarray, labelled: np.ndarray, unlabelled: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    z = _reduced(features)
    n_clusters = int(min(len(labelled) + k, len(z)))
    km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit(z)
    covered = set(km.labels_[labelled].tolist())
    sizes = np.bincount(km.labels_, minlength=n_clusters)
    free = np.zeros(len(z), bool)
    free[unlabelled] = True
    picks: list[int] = []
    for c in np.argsort(-sizes, kind="stable"):
        if len(picks) == k:
            break
        members = np.flatnonzero((km.labels_ == c) & free)
        if c in covered or not len(members):
            continue
        d = ((z[members] - km.cluster_centers_[c]) ** 2).sum(1)
        picks.append(int(members[np.argmin(d)]))
    if len(picks) < k:  # every cluster holds a label: fill with the rest, farthest first
        rest = np.setdiff1d(unlabelled, picks)
        picks += _kcenter(features, np.concatenate([labelled, picks]).astype(np.int64), rest, k - len(picks)).tolist()
    return np.asarray(picks, dtype=np.int64)


def _badge(features: np.ndarray, unlabelled: np.ndarray, probs: np.ndarray, k: int, seed: int) -> np.ndarray:
    z = _reduced(features)[unlabelled]
    p = np.asarray(probs, dtype=np.float32)
    residual = p.copy()
    residual[np.arange(len(p)), p.argmax(1)] -= 1.0
    g = (residual[:, :, None] * z[:, None, :]).reshape(len(z), -1)  # the last layer's loss gradient
    rng = np.random.default_rng(seed)
    norms = (g * g).sum(1)
    picks = [int(np.argmax(norms))]
    nearest = ((g - g[picks[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        total = nearest.sum()
        j = int(rng.choice(len(g), p=nearest / total)) if total > 0 else int(rng.integers(len(g)))
        picks.append(j)
        nearest = np.minimum(nearest, ((g - g[j]) ** 2).sum(1))
        nearest[picks] = 0.0
    return unlabelled[np.asarray(picks, dtype=np.int64)]


def select_batch(strategy: str, features: np.ndarray, labelled: np.ndarray, unlabelled: np.ndarray,
                 probs: np.ndarray | None, k: int, seed: int = 0) -> np.ndarray:
    """Indices (into ``features``) of the next ``k`` images to label, drawn from ``unlabelled``.

    ``probs``: the current model's probabilities for the ``unlabelled`` rows, in that order
    (needed by the uncertainty strategies). The result is ordered: the first is asked first.
    """
    unlabelled = np.asarray(unlabelled, dtype=np.int64)
    labelled = np.asarray(labelled, dtype=np.int64)
    k = int(min(k, len(unlabelled)))
    if k <= 0:
        return np.zeros(0, np.int64)
    if strategy == "random":
        return np.random.default_rng(seed).choice(unlabelled, k, replace=False)
    if strategy == "kcenter":
        return _kcenter(features, labelled, unlabelled, k)
    if strategy == "typical":
        return _typical(features, labelled, unlabelled, k, seed)
    if probs is None:
        raise ValueError(f"strategy '{strategy}' needs the model's probabilities")
    if strategy in ("typical-margin", "typical-badge"):
        if len(labelled) < SWITCH_PER_CLASS * np.asarray(probs).shape[1]:
            return _typical(features, labelled, unlabelled, k, seed)
        strategy = strategy.split("-")[1]
    order = np.argsort(margins(probs), kind="stable")
    if strategy == "margin":
        return unlabelled[order[:k]]
    if strategy == "margin-kcenter":
        return _kcenter(features, labelled, unlabelled[order[:MARGIN_POOL_FACTOR * k]], k)
    if strategy == "badge":
        return _badge(features, unlabelled, probs, k, seed)
    raise ValueError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
