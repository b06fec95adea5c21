"""One way to start, watch and stop background work: ``python -m engine ...`` processes.

Every background process of the product starts here, in its own session (so one
signal to its process group stops it and its children), with its output in a log
file and stdin closed. Nothing here runs inside the Streamlit script.

Two levels:

* :func:`spawn` starts a command and hands back the ``Popen``; the job queue
  (:mod:`engine.jobs.queue`) uses it for the dispatcher and each training job and
  keeps its own state in SQLite.
* A *task* is a spawned command with a folder: ``task.json`` (pid, argv, start
  time, later the outcome), a log, the exit status (written by a small shell
  wrapper, so any server process can read it, not just the one that started it)
  and optionally a result file the command writes atomically. :func:`start_task`,
  :func:`task_state` and :func:`cancel_task` work from the folder alone, so a
  refresh or a second tab sees the same task. The LR finder, the Dataset page's
  embedding map and the Export page's export are tasks.

Every task starts through :func:`start_task`, which first asks :func:`check_can_start`
(the server's and the workspace's concurrency caps, the disk quota and free disk) and
records the task in a server-wide register (``$TRANSFER_STUDIO_HOME/tasks/``); a task
that runs past ``max_task_hours`` is stopped by whichever server process looks next.

A pid is only ever trusted together with its process's start time
(:func:`process_start`): a pid recorded before a reboot, or one the kernel has
given to another process since, is neither "alive" nor signalled.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.errors import UserError
from engine.settings.limits import check_disk_quota, check_free_disk, limits
from engine.settings.profile import hosted
from engine.workspace import child_env, home, read_json, workspace_id, write_json_atomic

__all__ = ["engine_command", "spawn", "process_start", "pid_alive", "kill_group", "log_tail", "check_can_start",
           "running_tasks", "start_task", "task_state", "cancel_task", "TASK_FILE", "EXIT_FILE"]

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


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int | None) -> str | None:
    """When process ``pid`` started, as ``BOOT_ID:TICKS`` (``/proc/PID/stat`` field 22, clock ticks since
    boot); None when there is no such process or no ``/proc``. The same pid with another start is another process."""
    if not pid:
        return None
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[-1].split()
    except (OSError, ValueError):
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of the line, counted after "pid (comm)"


def pid_alive(pid: int | None, started: str | None = None) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone) and, given ``started`` (:func:`process_start` when it
    was recorded), is still the same process."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return started is None  # someone else's process: ours only if we cannot tell
    if started and process_start(pid) not in (None, started):
        return False  # the pid now belongs to another process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def kill_group(pid: int | None, sig: int = signal.SIGTERM, started: str | None = None) -> bool:
    """Signal the process group ``pid`` leads (every spawned command leads its own); False when it is gone.

    Given ``started``, a pid that now belongs to another process is left alone. A leader that is gone while
    its group lives on is still signalled: Linux never reuses a pid that still names a process group."""
    if not pid:
        return False
    if started and process_start(pid) not in (None, started):
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


def _register_dir() -> Path:
    path = home() / "tasks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _register_entry(folder: Path) -> Path:
    return _register_dir() / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]}.json"


def _over_time(task: dict) -> bool:
    return time.time() - float(task.get("started_at") or time.time()) > limits().max_task_hours * 3600


def _stop_over_time(folder: Path, pid: int | None, pid_start: str | None) -> None:
    """A task past the wall-clock cap: marked in its ``task.json`` (so its state says why), its group ended."""
    task = read_json(folder / TASK_FILE)
    if task and task.get("state") == "running" and not task.get("over_time"):
        write_json_atomic(folder / TASK_FILE, task | {"over_time": True})
    kill_group(pid, signal.SIGKILL, pid_start)


def running_tasks() -> list[dict]:
    """Every task running on the server now (register entries: folder, kind, workspace, pid, started_at).

    Entries of tasks that have ended are dropped; one past the wall-clock cap is stopped here."""
    found = []
    for entry in sorted(_register_dir().glob("*.json")):
        task = read_json(entry)
        if not task or not pid_alive(task.get("pid"), task.get("pid_start")):
            entry.unlink(missing_ok=True)
            continue
        if _over_time(task):
            _stop_over_time(Path(task["folder"]), task.get("pid"), task.get("pid_start"))
            continue
        found.append(task)
    return found


def check_can_start(kind: str) -> None:
    """Before any background task starts: the server's and (hosted) the workspace's concurrency caps, the
    workspace's disk quota and the server's free disk; UserError saying which limit and what to do."""
    cap = limits()
    running = running_tasks()
    if len(running) >= cap.tasks_at_once:
        raise UserError(f"the server is running {len(running)} background task(s), the most at once "
                        f"(TS_MAX_TASKS={cap.tasks_at_once}); start the {kind} again in a minute")
    wid = workspace_id()
    if hosted() and wid is not None:
        mine = sum(task.get("workspace") == wid for task in running)
        if mine >= cap.tasks_per_workspace:
            raise UserError(f"this workspace already runs {mine} background task(s), the most allowed "
                            f"(TS_MAX_TASKS_PER_WORKSPACE={cap.tasks_per_workspace}); wait for one to finish "
                            f"before starting the {kind}")
    check_disk_quota()
    check_free_disk()


def start_task(folder: Path, argv: list[str], result_name: str | None = "result.json", *,
               log_name: str = "task.log", info: dict | None = None) -> dict:
    """Start ``python -m engine *argv`` as the task of ``folder`` unless it is already running.

    ``result_name``: the file the command writes when it succeeds (removed first),
    or None when its exit status alone says. ``info`` is recorded in ``task.json``.
    Raises UserError when :func:`check_can_start` refuses (nothing is written then).
    """
    state = task_state(folder, result_name, log_name=log_name)
    if state and state["state"] == "running":
        return state
    # The check and the start under one server-wide lock: two tabs cannot both take the last slot.
    with open(home() / "tasks.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_can_start(argv[0] if argv else "task")
        folder.mkdir(parents=True, exist_ok=True)
        if result_name:
            (folder / result_name).unlink(missing_ok=True)
        exit_file = folder / EXIT_FILE
        exit_file.unlink(missing_ok=True)
        # The shell records the exit status where every server process can read it.
        wrapper = ["/bin/sh", "-c", '"$@"; echo $? > "$0"', str(exit_file), *engine_command(*argv)]
        proc = spawn(wrapper, folder / log_name)
        _CHILDREN[str(folder.resolve())] = proc
        task = {**(info or {}), "state": "running", "pid": proc.pid, "pid_start": process_start(proc.pid),
                "argv": list(argv), "started_at": time.time()}
        write_json_atomic(folder / TASK_FILE, task)
        write_json_atomic(_register_entry(folder), {"folder": str(folder.resolve()), "kind": argv[0] if argv else "",
                                                    "workspace": workspace_id(), "pid": proc.pid,
                                                    "pid_start": task["pid_start"], "started_at": task["started_at"]})
    return task


def _exit_code(folder: Path) -> int | None:
    try:
        return int((folder / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def task_state(folder: Path, result_name: str | None = "result.json", *, log_name: str = "task.log") -> dict | None:
    """``task.json`` with ``state`` brought up to date: running | done | failed | cancelled.

    A failed task carries ``error``: the last line of its log. The outcome is
    written back once, with ``exit_code`` and ``finished_at``. A task past the
    wall-clock cap is stopped here and fails saying so.
    """
    task = read_json(folder / TASK_FILE)
    if task is None:
        return None
    if task.get("state") != "running":
        return task
    child = _CHILDREN.get(str(folder.resolve()))
    if child is not None:
        child.poll()  # reap it if it has finished
    if pid_alive(task.get("pid"), task.get("pid_start")):
        if not _over_time(task):
            return task
        _stop_over_time(folder, task.get("pid"), task.get("pid_start"))
        task["over_time"] = True
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
    _CHILDREN.pop(str(folder.resolve()), None)
    _register_entry(folder).unlink(missing_ok=True)
    code = _exit_code(folder)
    if task.get("over_time"):
        outcome = {"state": "failed", "error": f"stopped after {limits().max_task_hours:g} h, the wall-clock "
                                               "limit per task (TS_MAX_TASK_HOURS); start it on less data"}
    elif task.get("cancel_requested"):
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
    if not task or task.get("state") != "running" or not pid_alive(task.get("pid"), task.get("pid_start")):
        return False
    write_json_atomic(folder / TASK_FILE, task | {"cancel_requested": True})
    return kill_group(task["pid"], started=task.get("pid_start"))
