"""Short background tasks a page starts and polls (the LR finder), outside the Streamlit script.

A task is one ``python -m engine ...`` process in its own session, with a folder
holding ``task.json`` (pid, start time), ``task.log`` and the result file the
command writes atomically. Any server process can read its state, so a refresh
or a second tab sees the same task.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.workspace import read_json, write_json_atomic

__all__ = ["pid_alive", "start_task", "task_state"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def start_task(folder: Path, argv: list[str], result_name: str = "result.json") -> dict:
    """Start ``python -m engine *argv`` for ``folder`` unless it is already running."""
    folder.mkdir(parents=True, exist_ok=True)
    state = task_state(folder, result_name)
    if state and state["state"] == "running":
        return state
    (folder / result_name).unlink(missing_ok=True)
    with open(folder / "task.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=_REPO_ROOT)
    task = {"state": "running", "pid": proc.pid, "argv": argv, "started_at": time.time()}
    write_json_atomic(folder / "task.json", task)
    return task


def task_state(folder: Path, result_name: str = "result.json") -> dict | None:
    """``task.json`` with state running | done | failed (and ``error``: the log's last line)."""
    task = read_json(folder / "task.json")
    if task is None:
        return None
    if pid_alive(task.get("pid")):
        return task
    if (folder / result_name).is_file():
        return task | {"state": "done"}
    log = folder / "task.log"
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()] if log.is_file() else []
    return task | {"state": "failed", "error": lines[-1] if lines else "the task stopped without a result"}
