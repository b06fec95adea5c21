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

A resident dispatcher (``worker --resident``, started with the app) keeps one *spare* job process on
this machine: Python, torch and the training code already imported, waiting on its stdin for a run. A
queued single-process job is handed to it (milliseconds) instead of a fresh process (seconds of imports
on a busy CPU), and a new spare is started behind it.

A run asked to stop (its ``cancel`` file) that has not stopped within
``CANCEL_GRACE_S`` has its process group ended by :func:`enforce_cancel`, on the
machine where the process runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Protocol

from engine.errors import UserError
from engine.runs.run_dir import Run
from engine.jobs.tasks import engine_command, kill_group, pid_alive, process_start, spawn
from engine.workspace import home

__all__ = ["EXECUTORS", "CANCEL_GRACE_S", "executor_name", "ray_address", "job_command", "job_env", "cancel_age",
           "enforce_cancel", "JobHandle", "Executor", "LocalExecutor", "SPARE_COMMAND"]

EXECUTORS = ("local", "ray")
CANCEL_GRACE_S = 15.0
SPARE_COMMAND = "job-runner"  # the CLI command a spare runs: imports, then one job read from stdin


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


class _Spare:
    """A job process started before its job (see the module's docstring); its own session, like every job."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        with open(home() / "spare.log", "a") as log:
            self.proc = subprocess.Popen(engine_command(SPARE_COMMAND), stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, text=True,
                                         env=job_env(threads))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def hand(self, run_dir: str, resume: bool) -> subprocess.Popen:
        """Give the spare its job; from now on it is that job's process (its log is the run's)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"run_dir": run_dir, "resume": resume}) + "\n")
        self.proc.stdin.close()
        return self.proc

    def close(self) -> None:
        """No job for it: closing its stdin ends it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid, signal.SIGKILL)


class LocalExecutor:
    """Each job is a process on this machine, at most ``capacity()`` slots at once (read once).

    ``warm=True`` (the resident dispatcher): one spare process is kept ready for the next job."""

    name = "local"

    def __init__(self, capacity: Callable[[], int], warm: bool = False) -> None:
        self._capacity, self._limit = capacity, 0
        self._spare: _Spare | None = None
        self._warm = warm
        if warm:
            self._spare = _Spare(self._threads(1))

    def capacity(self) -> int:
        self._limit = self._limit or self._capacity()
        return self._limit

    def _threads(self, nproc: int) -> int:
        return max(1, (os.cpu_count() or 1) // self.capacity()) // nproc

    def start(self, run_dir: str, resume: bool, nproc: int) -> JobHandle:
        threads = self._threads(nproc)
        spare, self._spare = self._spare, None
        if spare is not None and nproc == 1 and spare.threads == threads and spare.alive():
            handle = _LocalHandle(run_dir, spare.hand(run_dir, resume))
            self._spare = _Spare(threads)  # the next job finds one ready too
            return handle
        if spare is not None:
            spare.close()
        proc = spawn(job_command(run_dir, resume, nproc), Run(run_dir).log_file, env=job_env(threads), append=True)
        if self._warm:
            self._spare = _Spare(self._threads(1))
        return _LocalHandle(run_dir, proc)

    def close(self) -> None:
        """End the spare (the dispatcher is leaving); jobs already handed out run on."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def recover(self, run_dir: str, pid: int | None, ref: str | None) -> JobHandle | None:
        return _LocalHandle(run_dir, pid=pid, started=ref) if pid_alive(pid, ref) else None
