"""engine.jobs.tasks: background ``python -m engine ...`` processes started, watched and cancelled from a folder."""
from __future__ import annotations

import time

import pytest

from engine.jobs.tasks import cancel_task, pid_alive, start_task, task_state

pytestmark = pytest.mark.slow  # real processes


def _settle(folder, result_name=None, timeout=120):
    deadline = time.time() + timeout
    while (state := task_state(folder, result_name))["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)
    return state


def test_a_task_that_succeeds_is_done_and_its_output_is_in_the_log(tmp_path):
    task = start_task(tmp_path, ["backbones"], None, info={"what": "catalogue"})
    assert task["state"] == "running" and task["what"] == "catalogue"
    state = _settle(tmp_path)
    assert state["state"] == "done" and state["exit_code"] == 0
    assert "mobilenet_v2" in (tmp_path / "task.log").read_text()


def test_a_failing_task_reports_the_last_line_of_its_log(tmp_path):
    start_task(tmp_path, ["inspect", "/no/such/folder"], None)
    state = _settle(tmp_path)
    assert state["state"] == "failed" and state["exit_code"] == 2
    assert state["error"].startswith("error: '/no/such/folder' is neither a folder")


def test_a_task_without_its_result_file_failed_even_when_it_exited_0(tmp_path):
    start_task(tmp_path, ["backbones"], "result.json")
    assert _settle(tmp_path, "result.json")["state"] == "failed"


def test_cancel_stops_the_whole_process_group(tmp_path):
    task = start_task(tmp_path, ["bench", "health", "--n", "1000000"], None)
    assert start_task(tmp_path, ["backbones"], None)["pid"] == task["pid"]  # one task per folder at a time
    assert cancel_task(tmp_path)
    state = _settle(tmp_path, timeout=30)
    assert state["state"] == "cancelled"
    assert not pid_alive(task["pid"])
    assert not cancel_task(tmp_path)  # nothing left to cancel
