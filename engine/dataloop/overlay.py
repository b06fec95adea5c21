"""Corrections to a dataset, checked: relabel or drop an image, undo the last one.

The table itself (stored in the workspace, applied by ``load_dataset``) is :mod:`engine.data.corrections`;
here each operation is checked against the dataset it corrects, so a typo in a path or a class name is one
clear line, and the answer is the new version (its fingerprint) so the caller can show what changed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from engine.data.corrections import read_corrections, version_label, write_corrections
from engine.data.dataset import Dataset, load_dataset
from engine.errors import UserError

__all__ = ["DatasetVersion", "dataset_version", "relabel", "drop", "undo", "corrections"]


@dataclass(frozen=True)
class DatasetVersion:
    fingerprint: str
    corrections: int
    label: str  # "original" or "N corrections"


def dataset_version(dataset: Dataset) -> DatasetVersion:
    """The version ``dataset`` is (it was loaded with its workspace's corrections applied)."""
    rows = read_corrections(dataset.root)
    return DatasetVersion(dataset.fingerprint(), len(rows), version_label(dataset.root))


def corrections(dataset: Dataset) -> list[dict]:
    """The corrections applied to ``dataset``, oldest first."""
    return read_corrections(dataset.root)


def _reload(dataset: Dataset) -> Dataset:
    return load_dataset(dataset.root, val_fraction=dataset.val_fraction, seed=dataset.seed)


def _check_path(dataset: Dataset, path: str) -> None:
    paths = set(dataset.manifest["path"])
    if path not in paths:
        raise UserError(f"'{path}' is not an image of dataset '{dataset.name}'; give its path relative to the "
                        "dataset folder, as `label-issues` prints it")


def _append(dataset: Dataset, row: dict) -> DatasetVersion:
    rows = read_corrections(dataset.root)
    write_corrections(dataset.root, rows + [{**row, "at": time.time()}])
    return dataset_version(_reload(dataset))


def relabel(dataset: Dataset, path: str, label: str) -> DatasetVersion:
    """Give the image at ``path`` (relative to the dataset root) the class ``label``, one of the dataset's."""
    _check_path(dataset, path)
    if label not in dataset.classes:
        raise UserError(f"unknown class '{label}'; the classes of '{dataset.name}' are {', '.join(dataset.classes)}")
    return _append(dataset, {"path": path, "action": "relabel", "label": label})


def drop(dataset: Dataset, path: str) -> DatasetVersion:
    """Leave the image at ``path`` out of training and evaluation (its file stays where it is)."""
    _check_path(dataset, path)
    return _append(dataset, {"path": path, "action": "drop"})


def undo(dataset: Dataset) -> DatasetVersion:
    """Take back the last correction; UserError when there is none."""
    rows = read_corrections(dataset.root)
    if not rows:
        raise UserError(f"dataset '{dataset.name}' has no corrections to undo")
    write_corrections(dataset.root, rows[:-1])
    return dataset_version(_reload(dataset))
