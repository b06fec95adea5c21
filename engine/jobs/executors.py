"""Where a queued training job runs: on this machine (the default) or on a Ray cluster.

The SQLite queue of :mod:`engine.jobs.queue` stays the record of every job whatever
runs it (queue position, listing, cancel and restart recovery are one code path);
an executor only starts a job's command, ``python -m engine run-job RUN_DIR``
(through torchrun for ``nproc > 1``), and hands back a :class:`JobHandle` that
the dispatcher polls for the exit status.

The operator picks one with ``TS_EXECUTOR`` (``local`` | ``ray``, read by
:func:`executor_name` only); ``TS_RAY_ADDRESS`` (read by :func:`ray_address`)
says which Ray cluster. Each job row records the executor it was queued for, so a
change of setting applies to jobs queued afterwards and never strands earlier ones.

A run asked to stop (its ``cancel`` file) that has not stopped within
``CANCEL_GRACE_S`` has its process group ended by :func:`enforce_cancel`, on the
machine where the process runs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Protocol

from engine.errors import UserError
from engine.runs.run_dir import Run
from engine.jobs.tasks import engine_command, kill_group, pid_alive, process_start, spawn

__all__ = ["EXECUTORS", "CANCEL_GRACE_S", "executor_name", "ray_address", "job_command", "job_env", "cancel_age",
           "enforce_cancel", "JobHandle", "Executor", "LocalExecutor", "open_executor"]

EXECUTORS = ("local", "ray")
CANCEL_GRACE_S = 15.0


def executor_name() -> str:
    """``TS_EXECUTOR``: where jobs queued from now on run (default ``local``)."""
    name = (os.environ.get("TS_EXECUTOR") or "local").strip().lower()
    if name not in EXECUTORS:
        raise UserError(f"TS_EXECUTOR must be one of {', '.join(EXECUTORS)}, not '{name}'")
    return name


def ray_address() -> str:
    """``TS_RAY_ADDRESS``: the Ray cluster's address (``HOST:PORT`` or ``ray://HOST:10001``); default ``auto``."""
    return (os.environ.get("TS_RAY_ADDRESS") or "").strip() or "auto"


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


class JobHandle(Protocol):
    """A started job as the dispatcher sees it."""

    pid: int | None  # the job's process on this machine (local jobs)
    ref: str | None  # what a later dispatcher needs to find the job again (a Ray actor's name)
    failure: str | None  # set when the job was lost without an exit status of its own

    def poll(self) -> int | None:
        """The exit status once the job has ended, else None (and a cancel past its grace is enforced)."""
        ...


class Executor(Protocol):
    name: str

    def capacity(self) -> int:
        """How many job slots (processes) this executor can run at once now."""
        ...

    def start(self, run_dir: str, resume: bool, nproc: int) -> JobHandle:
        ...

    def recover(self, run_dir: str, pid: int | None, ref: str | None) -> JobHandle | None:
        """A job an earlier dispatcher started, if it still runs; None when it is gone."""
        ...


class _LocalHandle:
    """A job process on this machine; its ``ref`` is the process's start time, so a later dispatcher
    tells the job from a process that got the same pid after a reboot."""

    failure: str | None = None

    def __init__(self, run_dir: str, proc: subprocess.Popen | None = None, pid: int | None = None,
                 started: str | None = None):
        self.run_dir, self.proc = run_dir, proc
        self.pid = proc.pid if proc is not None else pid
        self.ref = process_start(self.pid) if proc is not None else started

    def poll(self) -> int | None:
        if self.proc is not None:
            code = self.proc.poll()
        else:  # a process started by an earlier dispatcher: alive or not, no exit status to read
            code = None if pid_alive(self.pid, self.ref) else -1
            if code is not None:
                self.failure = "the worker stopped without reporting an outcome"
        if code is None:
            enforce_cancel(self.pid, Run(self.run_dir), self.ref)
        return code


class LocalExecutor:
    """Each job is a process on this machine, at most ``capacity()`` slots at once (read once)."""

    name = "local"

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity, self._limit = capacity, 0

    def capacity(self) -> int:
        self._limit = self._limit or self._capacity()
        return self._limit

    def start(self, run_dir: str, resume: bool, nproc: int) -> JobHandle:
        threads = max(1, (os.cpu_count() or 1) // self.capacity()) // nproc
        proc = spawn(job_command(run_dir, resume, nproc), Run(run_dir).log_file, env=job_env(threads), append=True)
        return _LocalHandle(run_dir, proc)

    def recover(self, run_dir: str, pid: int | None, ref: str | None) -> JobHandle | None:
        return _LocalHandle(run_dir, pid=pid, started=ref) if pid_alive(pid, ref) else None


def open_executor(name: str, local_capacity: Callable[[], int]) -> Executor:
    """The executor called ``name``; UserError when it cannot be used here (Ray missing or unreachable)."""
    if name == "local":
        return LocalExecutor(local_capacity)
    if name == "ray":
        try:
            from engine.jobs.ray_executor import RayExecutor
        except ImportError as exc:
            raise UserError(f"TS_EXECUTOR=ray but Ray is not installed here ({exc}); "
                            "install it with `.venv/bin/pip install -r requirements-ray.txt`") from exc
        return RayExecutor(ray_address())
    raise UserError(f"unknown executor '{name}' (known: {', '.join(EXECUTORS)})")
