"""The job queue with real worker processes: cancel, refresh mid-run, kill + recover + resume, crashes."""
from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
import torch

from engine.jobs import queue as jobs
from engine.runs import TERMINAL_STATES
from engine.jobs.tasks import pid_alive
from engine.workspace import home
from conftest import dispatcher_pid as _dispatcher_pid, job_pid as _job_pid, make_shapes_dataset
from conftest import queued_run as _queued_run, wait_for as _wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _stop_dispatcher():
    pid = _dispatcher_pid()
    if pid:
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(pid), 20)


def test_cancel_running_job_and_read_it_mid_run(shapes_dir):
    run = _queued_run(shapes_dir, "cancel", epochs=30)
    jobs.submit(run)
    _wait(lambda: run.status().get("epoch", 0) >= 2 and run.status().get("state") == "running")
    # Refresh/reconnect: re-reading the run dir mid-run gives a consistent picture.
    for _ in range(10):
        status, metrics = run.status(), run.metrics()
        assert status["state"] == "running" and status["epochs"] == 30
        assert [m["epoch"] for m in metrics] == list(range(1, len(metrics) + 1))
        assert len(metrics) <= status["epoch"] <= len(metrics) + 1
        assert 0 <= status["progress"] <= 1
        time.sleep(0.1)
    asked = time.time()
    jobs.cancel(run)
    _wait(lambda: run.status()["state"] in TERMINAL_STATES, 30)
    assert run.status()["state"] == "cancelled"
    assert time.time() - asked < 15  # the loop checks between steps, well inside the grace period
    last = torch.load(run.last_checkpoint, weights_only=True)
    assert last["epoch"] == len(run.metrics()) >= 2
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] <= last["epoch"]


def test_killed_worker_is_marked_interrupted_and_resumes_to_the_end(shapes_dir):
    run = _queued_run(shapes_dir, "killed", epochs=5)
    jobs.submit(run)
    _wait(lambda: len(run.metrics()) >= 2)
    pid = _job_pid(run)
    # A server restart: the dispatcher and the worker die at once.
    _stop_dispatcher()
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), 20)
    assert run.status()["state"] == "running"  # nobody has noticed yet
    assert str(run.path.resolve()) in jobs.recover_interrupted()
    assert run.status()["state"] == "interrupted"
    done_before = len(run.metrics())
    jobs.submit(run, resume=True)
    _wait(lambda: run.status()["state"] in TERMINAL_STATES and run.status().get("stage") == "done")
    assert run.status()["state"] == "done", run.status()
    assert [m["epoch"] for m in run.metrics()] == [1, 2, 3, 4, 5]
    assert done_before >= 2
    # The evaluation is of the best checkpoint of the whole (resumed) run, and its numbers add up.
    evaluation = run.evaluation()
    assert evaluation["best_epoch"] == torch.load(run.best_checkpoint, weights_only=True)["epoch"]
    assert 1 <= evaluation["best_epoch"] <= 5
    confusion = np.array(evaluation["confusion_matrix"])
    assert confusion.sum() == evaluation["num_images"] > 0
    assert evaluation["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_crashed_jobs_fail_in_plain_words_and_the_queue_moves_on(tmp_path, shapes_dir):
    doomed_data = make_shapes_dataset(tmp_path / "doomed", per_class=6)
    blocker = _queued_run(shapes_dir, "blocker", mode="linear", epochs=2)
    doomed = _queued_run(doomed_data, "doomed", epochs=2)  # its dataset disappears while it waits
    victim = _queued_run(shapes_dir, "victim", epochs=30)  # its worker is killed mid-training
    survivor = _queued_run(shapes_dir, "survivor", mode="linear", epochs=2)
    for run in (blocker, doomed, victim, survivor):
        jobs.submit(run)
    assert jobs.queue_position(survivor) == jobs.queue_position(doomed) + 2
    shutil.rmtree(doomed_data)
    _wait(lambda: victim.status().get("stage") == "train" and _job_pid(victim))
    os.kill(_job_pid(victim), signal.SIGKILL)
    _wait(lambda: survivor.status()["state"] in TERMINAL_STATES and survivor.status().get("stage") == "done")
    assert survivor.status()["state"] == "done"
    status = doomed.status()
    assert status["state"] == "failed"
    assert "doomed" in status["error"] and "Traceback" not in status["error"]
    assert victim.status()["state"] == "failed"
    assert "killed" in victim.status()["error"]


def test_resubmitting_a_live_run_is_refused(shapes_dir):
    from engine.errors import UserError

    run = _queued_run(shapes_dir, "twice", mode="linear", epochs=2)
    jobs.submit(run)
    with pytest.raises(UserError, match="already"):
        jobs.submit(run)
    jobs.cancel(run)
    with pytest.raises(UserError, match="no last.pt"):
        jobs.submit(_queued_run(shapes_dir, "fresh", mode="linear", epochs=2), resume=True)


def test_torchrun_command_for_multi_process_runs():
    cmd = jobs.job_command("/x/run", resume=True, nproc=2)
    assert "--nproc_per_node=2" in cmd and cmd[-4:] == ["engine", "run-job", "/x/run", "--resume"]
    assert jobs.job_command("/x/run")[-3:] == ["engine", "run-job", "/x/run"]


def test_a_job_past_the_wall_clock_cap_is_stopped_and_says_so(shapes_dir, monkeypatch):
    _stop_dispatcher()  # the next dispatcher starts with this test's limit
    monkeypatch.setenv("TS_MAX_JOB_HOURS", str(4 / 3600))  # 4 s
    run = _queued_run(shapes_dir, "over-time", epochs=300)
    try:
        jobs.submit(run)
        # Until the dispatcher has recorded the job's end (the worker itself writes "cancelled" first).
        _wait(lambda: [j["state"] for j in jobs.list_jobs() if j["run_dir"] == str(run.path.resolve())]
              == ["finished"], 90)
    finally:
        _stop_dispatcher()  # no later test's job meets this limit
    status = run.status()
    assert status["state"] == "failed" and "TS_MAX_JOB_HOURS" in status["error"], status
    assert len(run.metrics()) < 300


def test_resident_dispatcher_hands_the_job_to_its_warm_spare(shapes_dir):
    """The app's resident dispatcher keeps a job process ready (torch imported); a queued job runs in it,
    writes to its own run's log, and a new spare is ready behind it."""
    import re

    from engine.workflow import run_settled

    _stop_dispatcher()
    spare_log = home() / "spare.log"
    before = spare_log.read_text() if spare_log.is_file() else ""

    def ready_pids() -> list[int]:
        text = spare_log.read_text()[len(before):] if spare_log.is_file() else ""
        return [int(p) for p in re.findall(r"job-runner (\d+): ready", text)]

    jobs.ensure_dispatcher(resident=True)
    try:
        _wait(lambda: ready_pids(), 180)
        spare = ready_pids()[0]
        run = _queued_run(shapes_dir, "warm", mode="linear", epochs=1)
        jobs.submit(run)
        _wait(lambda: run_settled(run), 240)
        status = run.status()
        assert status["state"] == "done", status
        assert status["pid"] == spare  # trained by the process that was ready before the job was queued
        assert status["follow_up"]["state"] == "done"
        assert "[job] run" in run.log_file.read_text()  # its output is in the run's log, not the spare's
        _wait(lambda: len(ready_pids()) >= 2, 180)  # the next job finds one ready too
        assert ready_pids()[1] != spare
    finally:
        _stop_dispatcher()
