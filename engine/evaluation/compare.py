"""Two runs on the same validation split: which images flipped, and a McNemar test of the difference."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

__all__ = ["mcnemar", "compare_predictions"]


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """Exact McNemar test on paired correctness: a two-sided binomial test (scipy) on the discordant
    images, which under "no difference" split 50/50 between "only A right" and "only B right"."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    only_a = int((a_right & ~b_right).sum())
    only_b = int((~a_right & b_right).sum())
    both = int((a_right & b_right).sum())
    neither = int((~a_right & ~b_right).sum())
    discordant = only_a + only_b
    p = float(binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    return {"table": [[both, only_a], [only_b, neither]], "a_only_right": only_a, "b_only_right": only_b,
            "both_right": both, "both_wrong": neither, "discordant": discordant, "p_value": p,
            "method": "exact McNemar (binomial test on the discordant images)",
            "significant_at_0.05": bool(p < 0.05)}


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Align two runs' per-image validation predictions by image path and compare them.

    Raises ValueError when the two validation splits are not the same images.
    """
    if set(a["path"]) != set(b["path"]) or len(a) != len(b):
        raise ValueError("the two runs were not evaluated on the same validation images")
    merged = a[["path", "file", "label_name", "pred_name", "correct", "confidence"]].merge(
        b[["path", "pred_name", "correct", "confidence"]], on="path", suffixes=("_a", "_b"))
    test = mcnemar(merged["correct_a"].to_numpy(), merged["correct_b"].to_numpy())
    flipped = merged[merged["correct_a"] != merged["correct_b"]].copy()
    flipped["change"] = np.where(flipped["correct_b"], "wrong → right", "right → wrong")
    flipped = flipped.rename(columns={"label_name": "true"})
    return {"images": int(len(merged)), "accuracy_a": float(merged["correct_a"].mean()),
            "accuracy_b": float(merged["correct_b"].mean()), "mcnemar": test,
            "flipped": flipped[["path", "file", "true", "pred_name_a", "pred_name_b", "confidence_a", "confidence_b",
                                "change"]].reset_index(drop=True)}
