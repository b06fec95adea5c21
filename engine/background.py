"""Moved to :mod:`engine.runs.tasks`; this alias stays only for ``engine.training.lr_finder`` until it imports that."""
from engine.runs.tasks import pid_alive, start_task, task_state

__all__ = ["pid_alive", "start_task", "task_state"]
