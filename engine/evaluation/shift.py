"""Is a whole batch unlike the training data? A two-sample test on backbone features.

The statistic is the unbiased squared maximum mean discrepancy (MMD, Gretton et al. 2012) between
the batch's L2-normalised pooled features and a reference sample of the training features, with a
Gaussian kernel whose width is the median pairwise distance of the pooled sample. Its p-value comes
from a permutation test (the batch/reference labels shuffled ``permutations`` times, seeded), so it
assumes nothing about the features' distribution. The per-image flags (k-NN distance, calibrated
on validation: :mod:`engine.evaluation.ood`, beside it) say which images; this test says whether the batch as a
whole comes from elsewhere, which a few flagged images by chance (1 % of in-distribution ones are)
cannot tell.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.evaluation.ood import sample_rows, unit_rows

__all__ = ["ShiftTest", "batch_shift_test", "batch_test_against", "reference_rows", "reference_sample",
           "shift_sentence", "REFERENCE_SIZE", "ALPHA"]

# Reference rows drawn from the training features: enough for the test's power at 50 images, and the
# kernel matrix of (reference + batch) rows stays small.
REFERENCE_SIZE = 500
PERMUTATIONS = 1999
ALPHA = 0.01
MIN_BATCH = 5


@dataclass
class ShiftTest:
    images: int
    reference_images: int
    mmd2: float
    p_value: float
    permutations: int
    flagged_share: float | None  # share of the batch's images the per-image OOD flag marks

    @property
    def shifted(self) -> bool:
        return self.p_value < ALPHA

    def to_dict(self) -> dict:
        return {"images": self.images, "reference_images": self.reference_images, "mmd2": self.mmd2,
                "p_value": self.p_value, "permutations": self.permutations, "shifted": self.shifted,
                "flagged_share": self.flagged_share, "sentence": shift_sentence(self)}


def reference_rows(n: int, size: int = REFERENCE_SIZE, seed: int = 0) -> np.ndarray:
    """Which of ``n`` training rows the reference sample holds: a seeded, sorted subsample (all when fewer)."""
    return sample_rows(n, size, seed)


def reference_sample(train_features: np.ndarray, size: int = REFERENCE_SIZE, seed: int = 0) -> np.ndarray:
    """A seeded subsample of the training features (all of them when there are fewer)."""
    x = np.asarray(train_features, dtype=np.float32)
    return x if len(x) <= size else x[reference_rows(len(x), size, seed)]


def _p_text(p: float, permutations: int) -> str:
    floor = 1.0 / (permutations + 1)
    if p <= floor * 1.0001:
        return f"p < {0.001 if floor < 0.001 else round(floor * 1.0001, 4)}"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def shift_sentence(test: ShiftTest) -> str:
    """The test in words, e.g. 'this batch differs from the training data (p < 0.001); 34 % of its images
    are flagged'."""
    flagged = "" if test.flagged_share is None else f"; {100 * test.flagged_share:.0f} % of its images are flagged"
    verdict = "differs from" if test.shifted else "is not shown to differ from"
    return f"this batch {verdict} the training data ({_p_text(test.p_value, test.permutations)}){flagged}"


def batch_shift_test(batch_features: np.ndarray, reference_features: np.ndarray, flags: np.ndarray | None = None,
                     permutations: int = PERMUTATIONS, seed: int = 0) -> ShiftTest | None:
    """MMD permutation test of a batch against the reference; None for a batch under ``MIN_BATCH`` images."""
    y = unit_rows(batch_features)
    x = unit_rows(reference_features)
    m, n = len(x), len(y)
    if n < MIN_BATCH or m < MIN_BATCH:
        return None
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    width2 = float(np.median(sq[np.triu_indices(len(z), 1)])) or 1.0
    kernel = np.exp(-sq / width2)
    np.fill_diagonal(kernel, 0.0)  # unbiased: no self-similarity terms
    rng = np.random.default_rng(seed)
    # Row 0 is the observed split; each later row a shuffle. s = 1 marks the batch's rows.
    assign = np.zeros((permutations + 1, m + n))
    assign[0, m:] = 1.0
    for i in range(1, permutations + 1):
        assign[i, rng.permutation(m + n)[:n]] = 1.0
    total = kernel.sum()
    ks = assign @ kernel  # (P, N): each row's kernel sums towards the batch side
    within_batch = (ks * assign).sum(1)
    cross = ks.sum(1) - within_batch
    within_ref = total - within_batch - 2 * cross
    stats = within_ref / (m * (m - 1)) + within_batch / (n * (n - 1)) - 2 * cross / (m * n)
    p = float((1 + (stats[1:] >= stats[0]).sum()) / (permutations + 1))
    share = None if flags is None or len(flags) == 0 else float(np.mean(np.asarray(flags, dtype=bool)))
    return ShiftTest(images=n, reference_images=m, mmd2=float(stats[0]), p_value=p, permutations=permutations,
                     flagged_share=share)


def batch_test_against(reference, features: np.ndarray, seed: int = 0) -> dict:
    """The batch test of ``features`` against a run's OOD reference (:class:`engine.evaluation.ood.OODReference`:
    its training features and calibrated per-image flag), as a dict with the sentence; or why there is none."""
    flags = reference.flags(reference.scores(features))
    test = batch_shift_test(features, reference_sample(reference.train_features, seed=seed), flags, seed=seed)
    if test is None:
        return {"available": False, "images": int(len(features)),
                "reason": f"the batch test needs at least {MIN_BATCH} images"}
    return {"available": True, **test.to_dict()}
