"""The bundle's compact out-of-distribution reference: what predict.py needs to flag images, not the training set.

The run's reference (:mod:`engine.evaluation.ood`) holds up to 10,000 training feature rows in float16 and
a threshold calibrated on validation. The bundle carries a seeded subsample of at most ``COMPACT_ROWS`` of
those rows, L2-normalised and quantised to int8 (a 1,280-d backbone: 2.5 MB at most), so no training image
can be read back from it and the download stays small. Fewer reference rows make every k-th-neighbour
distance longer, so two things keep the flag meaning what it meant ("beyond what 99 % of validation
images scored"):

* the neighbour rank shrinks with the sample (k' = k x rows kept / rows, at least 1), and
* the threshold is rescaled by the median ratio of compact to full scores, measured on the reference
  rows left out of the sample (each scored against the full reference without itself, and against the
  compact one).

The first ``REFERENCE_SIZE`` rows are also the batch test's reference sample (the MMD test of
:mod:`engine.evaluation.shift`, which predict.py carries a copy of).
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from engine.evaluation.ood import OODReference, unit_rows
from engine.evaluation.shift import REFERENCE_SIZE

__all__ = ["COMPACT_ROWS", "CALIBRATION_ROWS", "compact_reference", "compact_reference_bytes", "dequantise"]

COMPACT_ROWS = 2000
CALIBRATION_ROWS = 2000
_SCALE = 127.0


def dequantise(codes: np.ndarray) -> np.ndarray:
    """Unit rows back from their int8 codes (as predict.py does)."""
    return unit_rows(np.asarray(codes, dtype=np.float32) / _SCALE)


def _kth_distance(reference: np.ndarray, rows: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """Distance of each unit row to its k-th nearest unit reference row (one more when it is among them)."""
    sims = rows @ reference.T
    rank = k + 1 if skip_self else k
    kth = -np.partition(-sims, rank - 1, axis=1)[:, rank - 1]
    return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


def compact_reference(ood: OODReference, rows: int = COMPACT_ROWS, seed: int = 0) -> dict[str, Any]:
    """The arrays of the bundle's ``ood_reference.npz``: int8 codes, neighbour rank, threshold, and how the
    threshold was carried over."""
    full = unit_rows(ood.train_features)
    n = len(full)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    kept, left_out = np.sort(order[:rows]), order[rows:rows + CALIBRATION_ROWS]
    codes = np.clip(np.round(full[kept] * _SCALE), -127, 127).astype(np.int8)
    compact = dequantise(codes)
    k = int(max(1, min(len(kept), round(ood.k * len(kept) / max(n, 1)))))
    ratio = 1.0
    if len(left_out):
        full_scores = _kth_distance(full, full[left_out], ood.k, skip_self=True)
        compact_scores = _kth_distance(compact, full[left_out], k)
        ok = full_scores > 1e-6
        if ok.any():
            ratio = float(np.median(compact_scores[ok] / full_scores[ok]))
    # The batch test's reference rows first: a seeded shuffle of the kept rows.
    codes = codes[rng.permutation(len(codes))]
    return {"codes": codes, "k": np.int64(k), "threshold": np.float64(ood.threshold * ratio),
            "full_threshold": np.float64(ood.threshold), "threshold_ratio": np.float64(ratio),
            "full_rows": np.int64(n), "full_k": np.int64(ood.k), "flag_percentile": np.int64(ood.flag_percentile),
            "batch_reference_rows": np.int64(min(REFERENCE_SIZE, len(codes)))}


def compact_reference_bytes(ood: OODReference, rows: int = COMPACT_ROWS, seed: int = 0) -> bytes:
    """``compact_reference`` as the bytes of a compressed .npz (written into the bundle zip as they are)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **compact_reference(ood, rows, seed))
    return buffer.getvalue()
