"""Training jobs on a Ray cluster (``TS_EXECUTOR=ray``), so a cluster of GPU machines serves one dashboard.

Each job is one *detached* Ray actor that asks for the job's resources
(``num_gpus=nproc`` for a GPU run, ``num_cpus`` for its threads); Ray places it on
a node that has them, and there it runs the same command a local job runs,
``python -m engine run-job RUN_DIR`` (torchrun with ``nproc`` processes for a
multi-GPU run, all on that node), writing into the run directory. The run
directory and the rest of ``$TRANSFER_STUDIO_HOME`` must therefore be on storage
every node mounts at the same path, and every node runs Ray from this project's
installed environment.

Detached, because a job must outlive the dispatcher that started it: after a
server restart the job row's actor name finds the actor again (still running:
adopted; gone: the run is marked interrupted). Cancel goes through the run's
``cancel`` file, which the training loop polls; the actor itself ends the
process group on its node after ``CANCEL_GRACE_S`` (:func:`enforce_cancel`), and
the dispatcher kills the actor when even that has not worked. (``ray.cancel``
cannot stop an actor's method, hence ``ray.kill``.)

This module imports ray; :func:`engine.jobs.pool.open_executor` imports it
only when a job is queued for Ray.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import ray

from engine.errors import UserError
from engine.jobs.executors import CANCEL_GRACE_S, cancel_age, enforce_cancel, job_command
from engine.runs.run_dir import Run
from engine.jobs.tasks import spawn
from engine.workspace import home, strip_secrets

__all__ = ["RAY_NAMESPACE", "RayExecutor", "JobActor", "job_resources"]

RAY_NAMESPACE = "transfer-studio"
# After the grace period the actor ends the process itself; this much later the dispatcher kills the actor.
_KILL_MARGIN_S = 30.0
# The settings a job needs on whichever node runs it (the node's own PATH, CUDA_VISIBLE_DEVICES etc. stay).
_FORWARDED_ENV = ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME")


class JobActor:
    """Runs on the node Ray picked: starts the job's command there, waits for it, enforces a cancel."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._started = threading.Event()

    def run(self, run_dir: str, resume: bool, nproc: int, env: dict[str, str], threads: int) -> int:
        """Start the job (this node's interpreter) and return its exit status."""
        command = job_command(run_dir, resume, nproc)
        # Ray sets OMP_NUM_THREADS to the actor's CPUs; under torchrun each process gets its share.
        env = os.environ | env | {"OMP_NUM_THREADS": str(max(1, threads))}
        self._proc = spawn(command, Run(run_dir).log_file, env=env, append=True)
        self._started.set()
        return self.wait(run_dir)

    def pid(self) -> int:
        """The job's process (the leader of its process group) on this node."""
        self._started.wait()
        assert self._proc is not None
        return self._proc.pid

    def wait(self, run_dir: str) -> int:
        """The exit status of the job this actor started (a restarted dispatcher calls this to adopt it)."""
        self._started.wait()
        assert self._proc is not None
        while (code := self._proc.poll()) is None:
            enforce_cancel(self._proc.pid, Run(run_dir))
            time.sleep(0.5)
        return code


class _RayHandle:
    pid: int | None = None

    def __init__(self, actor, name: str, result, run_dir: str):
        self.actor, self.result, self.run_dir = actor, result, run_dir
        self.ref: str | None = name
        self.failure: str | None = None

    def poll(self) -> int | None:
        ready, _ = ray.wait([self.result], timeout=0)
        if not ready:
            age = cancel_age(Run(self.run_dir))
            if age is None or age <= CANCEL_GRACE_S + _KILL_MARGIN_S:
                return None
            self.failure = "the Ray actor did not stop after the cancel; it was killed"
            code = -signal.SIGKILL
        else:
            try:
                code = int(ray.get(self.result))
            except ray.exceptions.RayError as exc:  # the actor or its node died
                self.failure = f"the Ray worker running it was lost ({type(exc).__name__})"
                code = -signal.SIGKILL
        try:
            ray.kill(self.actor, no_restart=True)  # gives its GPUs back
        except Exception:
            pass
        return code


def job_resources(config: dict, nproc: int, cluster_gpus: float) -> tuple[int, int]:
    """``(num_cpus, num_gpus)`` a job asks Ray for: a GPU per process unless the run is on the CPU or the
    cluster has no GPU; a CPU per process, or the run's ``threads`` when more."""
    gpus = nproc if config.get("device") != "cpu" and cluster_gpus > 0 else 0
    return max(nproc, int(config.get("threads") or nproc)), gpus


def _check_reachable(address: str) -> None:
    """Fail fast on a head nobody answers at (``ray.init`` would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form ray.init understands and checks itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"TS_EXECUTOR=ray but nothing answers at TS_RAY_ADDRESS={address} ({exc})") from None


class RayExecutor:
    """Hands each job to a Ray cluster as one detached actor."""

    name = "ray"

    def __init__(self, address: str):
        self.address = address
        if not ray.is_initialized():
            _check_reachable(address)
            try:
                ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:
                raise UserError(f"TS_EXECUTOR=ray but the Ray cluster at '{address}' cannot be reached: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self._actor = ray.remote(JobActor)

    def capacity(self) -> int:
        """The same rule as on one machine (``TS_MAX_JOBS``, else per GPU), over the cluster's GPUs now."""
        from engine.settings.limits import jobs_at_once

        return jobs_at_once(int(ray.cluster_resources().get("GPU", 0)))

    def start(self, run_dir: str, resume: bool, nproc: int) -> _RayHandle:
        cpus, gpus = job_resources(Run(run_dir).config(), nproc, ray.cluster_resources().get("GPU", 0))
        name = f"ts-job-{secrets.token_hex(6)}"
        actor = self._actor.options(name=name, namespace=RAY_NAMESPACE, lifetime="detached", num_cpus=cpus,
                                    num_gpus=gpus, max_concurrency=4, max_restarts=0).remote()
        env = strip_secrets({key: value for key, value in os.environ.items()
                             if key.startswith("TS_") or key in _FORWARDED_ENV})  # never TS_PASSWORD
        env["TRANSFER_STUDIO_HOME"] = str(home().resolve())
        Run(run_dir).update_status(message=f"handed to Ray ({cpus} CPU, {gpus} GPU); waiting for a node")
        result = actor.run.remote(str(Path(run_dir).resolve()), resume, nproc, env,  # type: ignore[attr-defined]
                                  max(1, cpus // nproc))
        return _RayHandle(actor, name, result, run_dir)

    def recover(self, run_dir: str, pid: int | None, ref: str | None) -> _RayHandle | None:
        if not ref:
            return None
        try:
            actor = ray.get_actor(ref, namespace=RAY_NAMESPACE)
        except ValueError:  # no such actor any more: its node or the cluster went away
            return None
        return _RayHandle(actor, ref, actor.wait.remote(run_dir), run_dir)
