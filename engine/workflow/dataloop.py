"""The data loop's background tasks the pages start and follow: the label-issue search and the label pool's features.

Both are ``python -m engine ...`` processes started through :mod:`engine.jobs.tasks`, like the tasks in
:mod:`engine.workflow.tasks`; the work itself is :mod:`engine.dataloop`'s. ``*_state`` returns the task's state
(``running`` | ``done`` | ``failed`` | ``cancelled``, with ``error``) or None when none was started.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from engine.jobs.tasks import start_task, task_state
from engine.workspace import cache_dir, read_json

__all__ = ["ISSUES_RESULT", "label_issues_folder", "start_label_issues", "label_issues_state",
           "start_pool_features", "pool_features_state"]

ISSUES_RESULT = "issues.json"


def label_issues_folder(dataset) -> Path:
    """The label-issue task of this dataset (one per dataset folder and split; its result names the version)."""
    key = hashlib.blake2b(f"{Path(dataset.root).resolve()}:{dataset.val_fraction}:{dataset.seed}".encode(),
                          digest_size=10).hexdigest()
    return cache_dir() / "label-issues" / key


def start_label_issues(spec: str, dataset) -> dict:
    """Look for label issues in ``dataset`` (loaded from ``spec``) in a background process."""
    folder = label_issues_folder(dataset)
    argv = ["label-issues", str(spec), "--val-fraction", str(dataset.val_fraction), "--seed", str(dataset.seed),
            "--out", str(folder / ISSUES_RESULT)]
    return start_task(folder, argv, ISSUES_RESULT)


def label_issues_state(dataset) -> tuple[dict | None, dict | None]:
    """The search's task state and its last result (which may be of an earlier version of the dataset)."""
    folder = label_issues_folder(dataset)
    return task_state(folder, ISSUES_RESULT), read_json(folder / ISSUES_RESULT)


def _pool_folder(loop) -> Path:
    return cache_dir() / "pool-tasks" / loop.key()


def start_pool_features(loop) -> dict:
    """Compute the features of a label loop's pool and dataset (``LabelLoop.prepare_command``) in the background."""
    return start_task(_pool_folder(loop), loop.prepare_command(), None)


def pool_features_state(loop) -> dict | None:
    return task_state(_pool_folder(loop), None)
