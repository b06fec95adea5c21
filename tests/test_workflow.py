"""engine.workflow: a run's follow-up after "done", read honestly, and the pages going through the workflow."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from engine.jobs.tasks import process_start
from engine.runs import new_run
from engine.workflow import follow_up, run_settled

ROOT = Path(__file__).resolve().parent.parent


def _run_with(state: str, follow: dict | None):
    run = new_run("follow-up")
    run.write_config({"dataset": "digits", "backbone": "mobilenet_v2", "mode": "linear"})
    run.update_status(state=state, **({"follow_up": follow} if follow is not None else {}))
    return run


def test_a_done_run_is_settled_only_once_its_follow_up_has_ended():
    me = {"state": "running", "stage": "export", "pid": os.getpid(), "pid_start": process_start(os.getpid())}
    running = _run_with("done", me)
    assert follow_up(running)["state"] == "running"
    assert not run_settled(running)  # the export is still to come: pages keep polling
    finished = _run_with("done", {"state": "done"})
    assert run_settled(finished)
    assert run_settled(_run_with("done", None))  # a run from before follow-ups (or the CLI's own train)
    assert not run_settled(_run_with("running", None))


def test_a_follow_up_whose_process_is_gone_reads_stopped_not_running():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = process_start(child.pid)
    child.wait()
    run = _run_with("done", {"state": "running", "stage": "evaluate", "pid": child.pid, "pid_start": started})
    state = follow_up(run)
    assert state["state"] == "stopped"
    assert "Evaluate and Export pages" in state["error"]
    assert run_settled(run)  # nothing will change it any more: the pages stop polling and say why


def test_pages_start_and_follow_work_only_through_the_workflow():
    files = [*ROOT.glob("pages/*.py"), *ROOT.glob("app/*.py"), ROOT / "streamlit_app.py"]
    offending = {}
    for path in files:
        text = path.read_text()
        found = re.findall(r"engine\.jobs\.(?:queue|tasks|executors)|ensure_dispatcher|\bsubmit\(|result\.json|"
                           r"log_file|task\.log", text)
        if found:
            offending[path.name] = sorted(set(found))
    assert offending == {}
