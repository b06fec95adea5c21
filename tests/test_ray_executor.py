"""The Ray executor (TS_EXECUTOR=ray): queued jobs run as detached Ray actors on a local Ray instance.

The same SQLite queue, run directories and pages' calls (submit, queue_position, cancel,
resume_queue) as the local executor; only where the job's process runs differs. Ray is
installed by ``scripts/setup.sh --dev`` (requirements-ray.txt): these tests fail without it,
unless TS_SKIP_RAY is set.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

if os.environ.get("TS_SKIP_RAY"):
    pytest.skip("TS_SKIP_RAY is set", allow_module_level=True)

import ray  # noqa: E402  (no importorskip: `make test` installs it, a missing ray is a failure)

from engine.runs import TERMINAL_STATES, new_run  # noqa: E402
from engine.workflow import run_settled  # noqa: E402
from engine.jobs import queue as jobs  # noqa: E402
from engine.jobs.ray_executor import RAY_NAMESPACE, job_resources  # noqa: E402
from engine.jobs.tasks import kill_group, pid_alive  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from conftest import dispatcher_pid as _dispatcher_pid, stop_idle_dispatcher, wait_for as _wait  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs, no dashboard; jobs queued meanwhile go to it."""
    # The next dispatcher starts with this module's settings (one left by an earlier test keeps its own).
    stop_idle_dispatcher()
    info = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                    namespace=RAY_NAMESPACE, log_to_driver=False)
    saved = {key: os.environ.get(key) for key in ("TS_EXECUTOR", "TS_RAY_ADDRESS", "TS_MAX_JOBS")}
    os.environ.update(TS_EXECUTOR="ray", TS_RAY_ADDRESS=info.address_info["gcs_address"], TS_MAX_JOBS="1")
    try:
        yield info
    finally:
        pid = _dispatcher_pid()
        if pid:
            os.killpg(pid, signal.SIGTERM)
        for job in jobs.list_jobs():  # a test that failed mid-run leaves no training process behind
            if job["state"] == "running" and job["ref"] and _actor_alive(job["ref"]):
                actor = ray.get_actor(job["ref"], namespace=RAY_NAMESPACE)
                kill_group(ray.get(actor.pid.remote(), timeout=10), signal.SIGKILL)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray.shutdown()


def _queued_run(label, **kw):
    config = TrainConfig(dataset="digits", **({"mode": "linear", "image_size": 32, "batch_size": 32,
                                                "threads": 1} | kw))
    run = new_run(label)
    run.write_config(config.to_dict())
    return run


def _row(run):
    return next(j for j in jobs.list_jobs() if j["run_dir"] == str(run.path.resolve()))


def _actor_alive(name):
    try:
        ray.get_actor(name, namespace=RAY_NAMESPACE)
        return True
    except ValueError:
        return False


def _training(run):
    status = run.status()
    return status.get("state") == "running" and status.get("stage") == "train" and len(run.metrics()) >= 1


@pytest.mark.slow  # worker processes
def test_a_bad_executor_setting_is_one_clear_line(monkeypatch):
    from engine.errors import UserError

    monkeypatch.setenv("TS_EXECUTOR", "slurm")
    with pytest.raises(UserError, match="TS_EXECUTOR must be one of local, ray"):
        jobs.submit(_queued_run("bad-executor"))
    # A Ray head nobody answers at: the job fails at once, saying where it looked (no retrying for minutes).
    # The dispatcher reads the settings when it starts: stop one an earlier test left running.
    stop_idle_dispatcher()
    monkeypatch.setenv("TS_EXECUTOR", "ray")
    monkeypatch.setenv("TS_RAY_ADDRESS", "127.0.0.1:9")
    run = _queued_run("unreachable")
    jobs.submit(run)
    _wait(lambda: run.status()["state"] in TERMINAL_STATES, 60)
    status = run.status()
    assert status["state"] == "failed" and "TS_RAY_ADDRESS=127.0.0.1:9" in status["error"], status
    assert _row(run)["state"] == "finished"


def test_each_job_asks_ray_for_a_gpu_per_process():
    gpu_run = TrainConfig(dataset="digits", nproc=2).to_dict()
    assert job_resources(gpu_run, 2, cluster_gpus=8) == (2, 2)  # torchrun inside one actor: both GPUs on its node
    assert job_resources(gpu_run, 2, cluster_gpus=0) == (2, 0)  # a CPU-only cluster: gloo, a CPU per process
    assert job_resources(TrainConfig(dataset="digits", device="cpu", threads=4).to_dict(), 1, 8) == (4, 0)


@pytest.mark.slow  # worker processes
def test_a_job_runs_on_ray_to_the_end_and_a_cancel_stops_another(ray_cluster):
    long = _queued_run("ray-cancel", mode="full", epochs=30)
    quick = _queued_run("ray-probe")
    jobs.submit(long)
    jobs.submit(quick)
    assert jobs.queue_position(quick) in (1, 2)  # behind `long` until Ray has a slot
    _wait(lambda: _training(long), 300)
    row = _row(long)
    assert row["executor"] == "ray" and row["ref"].startswith("ts-job-") and _actor_alive(row["ref"])
    assert jobs.queue_position(quick) == 1  # one job at a time (TS_MAX_JOBS=1): it waits in the SQLite queue

    asked = time.time()
    jobs.cancel(long)
    _wait(lambda: long.status()["state"] in TERMINAL_STATES, 60)
    assert long.status()["state"] == "cancelled"
    assert time.time() - asked < 30
    assert long.config_file.is_file() and long.last_checkpoint.is_file() and long.metrics()  # run dir intact
    assert "epoch 1" in long.log_file.read_text()  # the job's output went to its run dir from the Ray worker

    _wait(lambda: run_settled(quick), 400)  # "done", then the evaluation and export follow-up
    status = quick.status()
    assert status["state"] == "done", status
    assert quick.metrics() and quick.evaluation()["accuracy"] > 0.5
    assert status["export"]["passed"], status["export"]
    _wait(lambda: _row(quick)["state"] == "finished", 30)  # the dispatcher has its exit status
    assert _row(quick)["executor"] == "ray" and _row(quick)["exit_code"] == 0
    # Finished jobs give their resources back: their actors are gone.
    _wait(lambda: not _actor_alive(row["ref"]) and not _actor_alive(_row(quick)["ref"]), 30)


@pytest.mark.slow  # worker processes
def test_a_restarted_dispatcher_adopts_a_running_ray_job_or_marks_a_lost_one_interrupted(ray_cluster):
    run = _queued_run("ray-adopt", mode="full", epochs=30)
    jobs.submit(run)
    _wait(lambda: _training(run), 300)
    ref = _row(run)["ref"]
    # A server restart: the dispatcher dies; the detached actor (and its job) carries on.
    pid = _dispatcher_pid()
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), 20)
    assert _actor_alive(ref)
    assert jobs.recover_interrupted() == []  # the app cannot tell about Ray jobs: it leaves them to the dispatcher
    jobs.resume_queue()  # app start: a dispatcher for the running Ray job
    _wait(_dispatcher_pid, 30)
    epoch = run.status()["epoch"]
    _wait(lambda: run.status()["epoch"] > epoch, 300)
    assert run.status()["state"] == "running" and _row(run)["state"] == "running"

    # The node is lost while the dispatcher is down: job and actor gone; the next dispatcher marks it interrupted.
    pid = _dispatcher_pid()
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), 20)
    actor = ray.get_actor(ref, namespace=RAY_NAMESPACE)
    os.killpg(ray.get(actor.pid.remote()), signal.SIGKILL)
    ray.kill(actor)
    _wait(lambda: not _actor_alive(ref), 30)
    assert run.status()["state"] == "running"  # nobody has noticed yet
    jobs.resume_queue()
    _wait(lambda: _row(run)["state"] == "finished", 60)
    status = run.status()
    assert status["state"] == "interrupted" and "resume" in status["error"]
    assert run.last_checkpoint.is_file()  # it can be resumed from there
