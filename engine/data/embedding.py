"""The embedding map (:mod:`engine.features.embedding`) as a background task of the Dataset page.

The page starts it (:func:`start_embedding_map`, a ``python -m engine inspect --embedding``
task) and polls :func:`embedding_status`; it never runs the backbone in the page script.
The compute and its constants are re-exported from :mod:`engine.features.embedding`.
"""
from __future__ import annotations

import pandas as pd

from engine.data.dataset import Dataset
from engine.features.embedding import (EMBED_BACKBONE, EMBED_SIZE, MAX_EMBED_IMAGES, METHODS, POINTS_FILE,
                                       embedding_folder, embedding_map)

__all__ = ["embedding_map", "embedding_folder", "start_embedding_map", "embedding_status", "EMBED_BACKBONE",
           "EMBED_SIZE", "MAX_EMBED_IMAGES", "METHODS", "POINTS_FILE"]


def start_embedding_map(spec: str, dataset: Dataset, method: str = "pca", max_images: int = MAX_EMBED_IMAGES) -> dict:
    """Compute the map of ``dataset`` (loaded from ``spec``) in a background process; poll :func:`embedding_status`."""
    from engine.jobs.tasks import start_task

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    argv = ["inspect", str(spec), "--val-fraction", str(dataset.val_fraction), "--embedding",
            "--embedding-max", str(max_images), "--embedding-method", method]
    return start_task(embedding_folder(dataset, method, max_images, dataset.seed), argv, POINTS_FILE)


def embedding_status(dataset: Dataset, method: str = "pca",
                     max_images: int = MAX_EMBED_IMAGES) -> tuple[dict | None, pd.DataFrame | None]:
    """The background task's state (None if none was started) and the map's points once they exist."""
    from engine.jobs.tasks import task_state

    folder = embedding_folder(dataset, method, max_images, dataset.seed)
    state = task_state(folder, POINTS_FILE)
    try:
        points = pd.read_parquet(folder / POINTS_FILE) if (folder / POINTS_FILE).is_file() else None
    except Exception:  # damaged: compute it again
        points = None
    return state, points
