"""The corrections overlay of a dataset: relabels and drops kept in the workspace, never in the user's files.

A dataset folder (or the folder a .zip or built-in set was unpacked to) is read-only to us: a correction
the analyst makes (this image is really a ``cat``; this one should not be trained on) is one row of a
small JSON table under the current workspace, keyed by the dataset's resolved root. ``load_dataset``
applies the table to the manifest after the split is assigned (so a relabel never moves an image between
train and validation), which makes a new dataset version: its fingerprint changes with every correction
and comes back when a correction is undone. This module sits on the data floor so ``load_dataset`` can
use it; the checked operations (unknown paths and classes refused) are :mod:`engine.dataloop.overlay`.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pandas as pd

from engine.workspace import read_json, workspace_root, write_json_atomic

__all__ = ["ACTIONS", "DROPPED_STATUS", "corrections_file", "read_corrections", "write_corrections",
           "apply_corrections", "version_label"]

ACTIONS = ("relabel", "drop")
DROPPED_STATUS = "dropped by a correction (undo it on the Dataset page or with `python -m engine undo`)"


def corrections_file(root: Path | str) -> Path:
    """Where the corrections of the dataset at ``root`` live in the current workspace."""
    key = hashlib.blake2b(str(Path(root).resolve()).encode(), digest_size=10).hexdigest()
    return workspace_root() / "corrections" / f"{key}.json"


def read_corrections(root: Path | str) -> list[dict]:
    """The corrections of the dataset at ``root``, oldest first: ``{path, action, label, at}`` each."""
    data = read_json(corrections_file(root), default=None) or {}
    rows = data.get("corrections", []) if isinstance(data, dict) else []
    return [r for r in rows if isinstance(r, dict) and r.get("action") in ACTIONS and isinstance(r.get("path"), str)]


def write_corrections(root: Path | str, rows: list[dict]) -> None:
    """Replace the corrections table of the dataset at ``root`` (atomically)."""
    write_json_atomic(corrections_file(root), {"root": str(Path(root).resolve()), "updated_at": time.time(),
                                               "corrections": rows})


def apply_corrections(root: Path | str, manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` with the corrections of ``root`` applied: the last one per path wins.

    A drop marks the row unusable (status ``DROPPED_STATUS``); a relabel changes its label. Rows the table
    names that are no longer in the folder are ignored. The manifest is returned unchanged (the same object)
    when there are no corrections.
    """
    rows = read_corrections(root)
    if not rows:
        return manifest
    last = {r["path"]: r for r in rows}
    manifest = manifest.copy()
    index = pd.Index(manifest["path"])
    for path, row in last.items():
        hits = index.get_indexer([path])
        if hits[0] < 0:
            continue
        i = manifest.index[hits[0]]
        if manifest.at[i, "status"] != "ok":
            continue
        if row["action"] == "drop":
            manifest.at[i, "status"] = DROPPED_STATUS
        elif isinstance(row.get("label"), str) and row["label"]:
            manifest.at[i, "label"] = row["label"]
    return manifest


def version_label(root: Path | str) -> str:
    """The dataset version in words: ``original`` or ``N corrections``."""
    n = len(read_corrections(root))
    return "original" if n == 0 else f"{n} correction{'s' if n != 1 else ''}"
