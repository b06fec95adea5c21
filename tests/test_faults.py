"""Faults mid-run (issue 13): the worker killed, the server restarted. No run is lost or corrupted, and
the page says what happened.

tests/test_jobs_lifecycle.py already kills the dispatcher and the job by pid and resumes through the
engine; here the whole process groups are killed, the server's start-up path (``resume_queue``) finds
the run, its files are checked, and the Train page (AppTest) says it was interrupted and resumes it.
The server restart drives a real ``streamlit run`` and a browser, as tests/test_e2e_browser.py does.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import dispatcher_pid as _dispatcher_pid, need_browser, job_pid, queued_run, wait_for
from tests.load.harness import CHROMIUM, CHROMIUM_ARGS, IDLE, free_port, serve
from engine.jobs import queue as jobs
from engine.jobs.tasks import kill_group, pid_alive
from engine.workflow import run_settled
from engine.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PAGE = str(ROOT / "pages" / "train.py")
SHOTS = Path(os.environ.get("TS_SHOTS_DIR", "/tmp/ts-shots"))  # a screenshot when the page is not as expected


def _kill_workers(run) -> None:
    """SIGKILL the dispatcher's and the job's process groups at once, as a crash or OOM kill of both would."""
    dispatcher, job = _dispatcher_pid(), job_pid(run)
    assert job, "the job is not running"
    for pid in (dispatcher, job):
        kill_group(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(job) and not pid_alive(dispatcher), 30)


def _assert_files_intact(run) -> int:
    """config.json reads back as a TrainConfig, every metrics line parses, last.pt loads (weights only)."""
    config = TrainConfig.from_dict(json.loads((run.path / "config.json").read_text()))
    assert config.epochs == 6
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines if line.strip()]
    assert epochs == list(range(1, len(epochs) + 1))
    last = torch.load(run.last_checkpoint, weights_only=True)
    assert 1 <= last["epoch"] <= len(epochs) + 1
    return len(epochs)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_workers_leave_an_intact_interrupted_run_the_train_page_resumes(shapes_dir):
    run = queued_run(shapes_dir, "fault-kill", epochs=6)
    jobs.submit(run)
    wait_for(lambda: len(run.metrics()) >= 2 and job_pid(run))
    _kill_workers(run)
    assert run.status()["state"] == "running"  # nobody has noticed yet

    jobs.resume_queue()  # what the app does when the server starts again
    status = run.status()
    assert status["state"] == "interrupted" and "server restart or killed" in status["error"]
    done_before = _assert_files_intact(run)

    at = AppTest.from_file(TRAIN_PAGE, default_timeout=60)
    at.query_params["run"] = run.id
    at.run()
    assert not at.exception, at.exception
    assert any("Training was interrupted" in w.value and "server restart or killed" in w.value for w in at.warning)
    at.button(key="resume_run").click().run()
    assert not at.exception, at.exception
    wait_for(lambda: run_settled(run), 300, poll=1)
    assert run.status()["state"] == "done", run.status()
    assert [m["epoch"] for m in run.metrics()] == [1, 2, 3, 4, 5, 6] and done_before >= 2
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == run.evaluation()["best_epoch"]


def _state_shown(page, state: str, timeout_ms: int = 240_000) -> None:
    page.locator("code", has_text=state).first.wait_for(timeout=timeout_ms)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_server_restart_mid_run_keeps_the_job_or_marks_it_interrupted(shapes_dir, workspace_home):
    from playwright.sync_api import sync_playwright

    need_browser()
    env = os.environ.copy() | {"TRANSFER_STUDIO_HOME": str(workspace_home)}
    env.pop("TS_PROFILE", None)
    port, log = free_port(), workspace_home / "fault-server.log"
    # The victim must still be training when it is killed: 30 epochs of these images took 8 s on a quiet
    # machine, less than the page visits before the kill; it is killed (or cancelled) long before 400.
    survivor, victim = queued_run(shapes_dir, "fault-restart", epochs=15), queued_run(shapes_dir, "fault-dies",
                                                                                      epochs=400)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # 1. The server restarts while a job trains: the detached job goes on, and the open page,
            #    reconnected to the new server, shows it running and then finished.
            with serve(ROOT / "streamlit_app.py", env, log, timeout=90, port=port) as server:
                jobs.submit(survivor)
                wait_for(lambda: job_pid(survivor) and survivor.status().get("state") == "running")
                page.goto(f"{server.url}/train?run={survivor.id}", timeout=90_000)
                _state_shown(page, "running")
                assert "Transfer Studio" in page.locator("[data-testid='stSidebar']").inner_text()  # the frame
                pid = job_pid(survivor)
            assert pid_alive(pid), "stopping the server stopped the job"
            with serve(ROOT / "streamlit_app.py", env, log, timeout=90, port=port) as server:
                assert job_pid(survivor) == pid  # still running, and the restarted server's recovery left it so
                _state_shown(page, "done")  # the same tab, reconnected
                page.get_by_text("Evaluation on the").first.wait_for(timeout=120_000)
                assert page.locator("[data-testid='stException']").count() == 0
                assert survivor.status()["state"] == "done"
                assert [m["epoch"] for m in survivor.metrics()] == list(range(1, 16))

                # 2. The worker dies while the server is down: the restarted server marks it interrupted and
                #    the page says so and offers to resume.
                jobs.submit(victim)
                wait_for(lambda: len(victim.metrics()) >= 2 and job_pid(victim))
                page.goto(f"{server.url}/train?run={victim.id}", timeout=90_000)
                _state_shown(page, "running")
            _kill_workers(victim)
            with serve(ROOT / "streamlit_app.py", env, log, timeout=90, port=port) as server:
                page.goto(f"{server.url}/train?run={victim.id}", timeout=90_000)
                page.wait_for_timeout(300)
                page.wait_for_selector(IDLE, timeout=90_000)
                try:
                    page.get_by_text("Training was interrupted").wait_for(timeout=60_000)
                    page.get_by_role("button", name="Resume run").wait_for(timeout=30_000)
                except Exception:
                    page.screenshot(path=str(SHOTS / "fault-interrupted.png"), full_page=True)
                    raise
                assert "server restart or killed" in page.locator("[data-testid='stMain']").inner_text()
                # Through the frame (its sidebar and navigation), not pages/train.py alone.
                assert "Transfer Studio" in page.locator("[data-testid='stSidebar']").inner_text()
        finally:
            browser.close()
            jobs.cancel(victim)
    assert victim.status()["state"] == "interrupted"
    assert victim.last_checkpoint.is_file()
    torch.load(victim.last_checkpoint, weights_only=True)
    errors = [line for line in log.read_text().splitlines() if "Traceback" in line or "Error" in line]
    assert errors == [], errors
    assert not any(j["state"] == "running" for j in jobs.list_jobs() if j["run_dir"] in
                   (str(survivor.path.resolve()), str(victim.path.resolve())))
