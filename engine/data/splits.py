"""Which images train, which validate, which are held out: the folder's own split, or a seeded stratified one."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import UserError

__all__ = ["assign_split"]


def assign_split(manifest: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Give every usable row a split: the folder's own, or a stratified one.

    A ``test/`` split is held out: it is never used to choose anything, only to
    report. When the data has ``train/`` and ``test/`` but no ``val/``, validation
    is drawn from ``train/``. Without split folders each class sends
    ``val_fraction`` of its images (at least one, when it has two or more) to
    validation, chosen with a fixed seed.
    """
    manifest = manifest.copy()
    splits = set(manifest["split"]) - {""}
    if "train" in splits and "val" in splits:
        return manifest
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    if "train" in splits and "test" in splits:
        ok = (manifest["status"] == "ok") & (manifest["split"] == "train")
    else:
        manifest["split"] = "train"
        ok = manifest["status"] == "ok"
    for _label, index in manifest[ok].groupby("label").groups.items():
        index = np.array(sorted(index))
        if len(index) < 2:
            continue
        n_val = max(1, int(round(len(index) * val_fraction)))
        n_val = min(n_val, len(index) - 1)
        manifest.loc[rng.choice(index, size=n_val, replace=False), "split"] = "val"
    return manifest
