"""A training job's worker process, whichever executor starts it: its command line, its environment, and
the stop a cancel enforces after its grace. Shared by :mod:`engine.jobs.executors` (this machine) and
:mod:`engine.jobs.ray_executor` (a Ray actor), so neither imports the other for it.
"""
from __future__ import annotations

import os
import signal
import time

from engine.jobs.tasks import engine_command, kill_group
from engine.runs.run_dir import Run

__all__ = ["CANCEL_GRACE_S", "job_command", "job_env", "cancel_age", "enforce_cancel"]

CANCEL_GRACE_S = 15.0


def job_command(run_dir: str, resume: bool = False, nproc: int = 1) -> list[str]:
    """The worker command line: one process, or torchrun with ``nproc`` of them."""
    args = ["run-job", run_dir, *(["--resume"] if resume else [])]
    if nproc > 1:
        from engine.training.distributed import torchrun_command

        return torchrun_command(nproc, args)
    return engine_command(*args)


def job_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: ``base`` (default this process's) with ``threads`` CPU threads unless set already."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    return env


def cancel_age(run: Run) -> float | None:
    """Seconds since someone asked ``run`` to stop; None when nobody did."""
    try:
        return time.time() - float(run.cancel_file.read_text() or 0)
    except (OSError, ValueError):
        return None


def enforce_cancel(pid: int | None, run: Run, started: str | None = None) -> None:
    """A run asked to stop gets CANCEL_GRACE_S to do it cleanly, then its process group is terminated
    (killed, when that has not worked either after as long again). ``started``: the process's start
    (:func:`engine.jobs.tasks.process_start`), so a pid reused by another process is never signalled."""
    age = cancel_age(run)
    if age is not None and age > CANCEL_GRACE_S:
        # It leads its own session.
        kill_group(pid, signal.SIGKILL if age > 2 * CANCEL_GRACE_S else signal.SIGTERM, started)
