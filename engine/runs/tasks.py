"""One way to start, watch and stop background work: ``python -m engine ...`` processes.

Every background process of the product starts here, in its own session (so one
signal to its process group stops it and its children), with its output in a log
file and stdin closed. Nothing here runs inside the Streamlit script.

Two levels:

* :func:`spawn` starts a command and hands back the ``Popen``; the job queue
  (:mod:`engine.runs.jobs`) uses it for the dispatcher and each training job and
  keeps its own state in SQLite.
* A *task* is a spawned command with a folder: ``task.json`` (pid, argv, start
  time, later the outcome), a log, the exit status (written by a small shell
  wrapper, so any server process can read it, not just the one that started it)
  and optionally a result file the command writes atomically. :func:`start_task`,
  :func:`task_state` and :func:`cancel_task` work from the folder alone, so a
  refresh or a second tab sees the same task. The LR finder, the Dataset page's
  embedding map and the Export page's export are tasks.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.workspace import child_env, read_json, write_json_atomic

__all__ = ["engine_command", "spawn", "pid_alive", "kill_group", "log_tail", "start_task", "task_state",
           "cancel_task", "TASK_FILE", "EXIT_FILE"]

TASK_FILE = "task.json"
EXIT_FILE = "task.exit"
# Popen objects of tasks this process started, so finished children are reaped (no zombies).
_CHILDREN: dict[str, subprocess.Popen] = {}


def engine_command(*argv: str) -> list[str]:
    """``python -m engine *argv`` with this interpreter (the installed package, whatever the working directory)."""
    return [sys.executable, "-m", "engine", *argv]


def spawn(command: list[str], log: Path, *, env: dict[str, str] | None = None,
          append: bool = False) -> subprocess.Popen:
    """Start ``command`` detached in its own session, stdout and stderr to ``log``.

    The default environment carries the current workspace (``engine.workspace.child_env``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if append else "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env if env is not None else child_env())


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


def kill_group(pid: int | None, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group ``pid`` leads (every spawned command leads its own); False when it is gone."""
    if not pid:
        return False
    try:
        os.killpg(int(pid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def log_tail(log: Path, limit: int = 300) -> str:
    """The last non-empty line of ``log`` (at most ``limit`` characters), or ''."""
    if not log.is_file():
        return ""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def start_task(folder: Path, argv: list[str], result_name: str | None = "result.json", *,
               log_name: str = "task.log", info: dict | None = None) -> dict:
    """Start ``python -m engine *argv`` as the task of ``folder`` unless it is already running.

    ``result_name``: the file the command writes when it succeeds (removed first),
    or None when its exit status alone says. ``info`` is recorded in ``task.json``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = task_state(folder, result_name, log_name=log_name)
    if state and state["state"] == "running":
        return state
    if result_name:
        (folder / result_name).unlink(missing_ok=True)
    exit_file = folder / EXIT_FILE
    exit_file.unlink(missing_ok=True)
    # The shell records the exit status where every server process can read it.
    wrapper = ["/bin/sh", "-c", '"$@"; echo $? > "$0"', str(exit_file), *engine_command(*argv)]
    proc = spawn(wrapper, folder / log_name)
    _CHILDREN[str(folder.resolve())] = proc
    task = {**(info or {}), "state": "running", "pid": proc.pid, "argv": list(argv), "started_at": time.time()}
    write_json_atomic(folder / TASK_FILE, task)
    return task


def _exit_code(folder: Path) -> int | None:
    try:
        return int((folder / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def task_state(folder: Path, result_name: str | None = "result.json", *, log_name: str = "task.log") -> dict | None:
    """``task.json`` with ``state`` brought up to date: running | done | failed | cancelled.

    A failed task carries ``error``: the last line of its log. The outcome is
    written back once, with ``exit_code`` and ``finished_at``.
    """
    task = read_json(folder / TASK_FILE)
    if task is None:
        return None
    if task.get("state") != "running":
        return task
    child = _CHILDREN.get(str(folder.resolve()))
    if child is not None:
        child.poll()  # reap it if it has finished
    if pid_alive(task.get("pid")):
        return task
    _CHILDREN.pop(str(folder.resolve()), None)
    code = _exit_code(folder)
    if task.get("cancel_requested"):
        outcome = {"state": "cancelled", "error": "cancelled"}
    elif code == 0 and (result_name is None or (folder / result_name).is_file()):
        outcome = {"state": "done"}
    elif code is None and result_name and (folder / result_name).is_file():
        outcome = {"state": "done"}  # a task from before exit statuses were recorded
    else:
        reason = log_tail(folder / log_name) or (f"the task exited with code {code} without a message"
                                                 if code is not None else "the task stopped without a result")
        outcome = {"state": "failed", "error": reason}
    task.update(outcome, exit_code=code, finished_at=time.time())
    write_json_atomic(folder / TASK_FILE, task)
    return task


def cancel_task(folder: Path) -> bool:
    """Stop the running task of ``folder`` (its whole process group); False when none was running."""
    task = read_json(folder / TASK_FILE)
    if not task or task.get("state") != "running" or not pid_alive(task.get("pid")):
        return False
    write_json_atomic(folder / TASK_FILE, task | {"cancel_requested": True})
    return kill_group(task["pid"])
