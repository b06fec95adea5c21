"""The dispatcher's executors: each opened on first use (Ray only once a job is queued for it), and the
one that stands in for an executor that cannot be opened here.

Apart from :mod:`engine.jobs.executors` so that the Ray executor, which builds on it, is imported
only from here (no import loop between the two).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from engine.errors import UserError
from engine.jobs.executors import EXECUTORS, Executor, JobHandle, LocalExecutor, ray_address

__all__ = ["open_executor", "ExecutorPool", "UnreachableExecutor"]


class UnreachableExecutor:
    """An executor that cannot be opened here: none of its jobs can be found again, none can start."""

    def __init__(self, name: str, error: str) -> None:
        self.name, self.error = name, error

    def capacity(self) -> int:
        return 0

    def start(self, run_dir: str, resume: bool, nproc: int) -> JobHandle:
        raise UserError(self.error)

    def recover(self, run_dir: str, pid: int | None, ref: str | None) -> JobHandle | None:
        return None


def open_executor(name: str, local_capacity: Callable[[], int], warm: bool = False) -> Executor:
    """The executor called ``name``; UserError when it cannot be used here (Ray missing or unreachable).

    ``warm``: a local executor keeps a spare job process ready (the resident dispatcher)."""
    if name == "local":
        return LocalExecutor(local_capacity, warm=warm)
    if name == "ray":
        try:
            from engine.jobs.ray_executor import RayExecutor
        except ImportError as exc:
            raise UserError(f"TS_EXECUTOR=ray but Ray is not installed here ({exc}); "
                            "install it with `.venv/bin/pip install -r requirements-ray.txt`") from exc
        return RayExecutor(ray_address())
    raise UserError(f"unknown executor '{name}' (known: {', '.join(EXECUTORS)})")


class ExecutorPool:
    """The dispatcher's executors, opened on first use (connecting to Ray only when a job is queued for it);
    a resident dispatcher opens the local one at once, so its spare job process is warm before any click."""

    def __init__(self, local_capacity: Callable[[], int], warm: bool = False) -> None:
        self._open: dict[str, Executor] = {}
        self._local_capacity = local_capacity
        self._warm = warm
        if warm:
            self.get("local")

    def get(self, name: str) -> Executor:
        if name not in self._open:
            self._open[name] = open_executor(name, self._local_capacity, warm=self._warm)
        return self._open[name]

    def close(self) -> None:
        for executor in self._open.values():
            if isinstance(executor, LocalExecutor):
                executor.close()

    def recoverable(self, names: set[str]) -> dict[str, Executor]:
        """An executor for each of ``names`` (the kinds of job now running); one that cannot be opened here
        finds none of its jobs."""
        found: dict[str, Executor] = {}
        for name in sorted(names):
            try:
                found[name] = self.get(name)
            except UserError as exc:  # its jobs cannot be found again: they are marked interrupted
                print(f"{time.strftime('%H:%M:%S')} dispatcher: {exc}", flush=True)
                found[name] = UnreachableExecutor(name, str(exc))
        return found
