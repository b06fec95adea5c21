"""A persistent job queue for training runs, drained by a detached dispatcher.

The queue is a SQLite table in the workspace, so it survives a server restart.
``submit`` records a job and makes sure a dispatcher process is running; the
dispatcher (``python -m engine worker``) starts each job as its own
``python -m engine run-job RUN_DIR`` process, at most ``max_concurrent`` at a
time, and exits when the queue is empty. Only one dispatcher runs at once
(an exclusive file lock). Nothing here runs inside the Streamlit script.

A run whose config asks for ``nproc > 1`` starts through torchrun (one process per
GPU, DistributedDataParallel) and takes ``nproc`` of the concurrency slots. A run
asked to stop that has not stopped within ``CANCEL_GRACE_S`` is terminated.

Where a job runs is its executor's business (:mod:`engine.jobs.executors`): a
process on this machine (``local``, the default) or a detached actor on a Ray
cluster (``TS_EXECUTOR=ray``). Each row records the executor it was queued for and
what finds the job again after a restart (a pid, a Ray actor's name).
"""
from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from engine.errors import UserError
from engine.jobs.executors import CANCEL_GRACE_S, Executor, JobHandle, LocalExecutor, executor_name, job_command
from engine.jobs.pool import ExecutorPool
from engine.runs.run_dir import TERMINAL_STATES, Run, new_run
from engine.jobs.tasks import engine_command, log_tail, pid_alive, process_start, spawn
from engine.settings.audit import audit
from engine.settings.limits import check_disk_quota, check_free_disk, check_training_ceilings, limits
from engine.settings.profile import hosted
from engine.workspace import home, workspace_id, workspace_of

__all__ = ["queue_new_run", "submit", "job_command", "CANCEL_GRACE_S", "cancel", "queue_position", "list_jobs",
           "check_can_queue", "queue_lock", "dispatch_forever", "ensure_dispatcher", "recover_interrupted",
           "resume_queue", "max_concurrent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_dir TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,           -- queued | running | finished
    pid INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER
)
"""
# How deep this thread holds queue_lock (0: not at all).
_QUEUE_LOCK_HELD = threading.local()
_COLUMNS = {"resume": "INTEGER NOT NULL DEFAULT 0", "nproc": "INTEGER NOT NULL DEFAULT 1",
            "executor": "TEXT NOT NULL DEFAULT 'local'", "ref": "TEXT"}


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(home() / "jobs.sqlite", timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(_SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, decl in _COLUMNS.items():
        if name not in have:  # a queue file from an older version
            try:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            except sqlite3.OperationalError:
                pass  # another process added it first
    return conn


def max_concurrent() -> int:
    """Jobs at once: TS_MAX_JOBS, else TS_JOBS_PER_DEVICE per GPU (or on the CPU) (engine.settings.limits)."""
    from engine.settings.limits import jobs_at_once

    try:
        import torch

        devices = torch.cuda.device_count()
    except Exception:
        devices = 0
    return jobs_at_once(devices)


def submit(run: Run, resume: bool = False) -> int:
    """Queue ``run`` (its config.json must exist) and make sure a dispatcher is up.

    ``resume=True`` continues the run from its last.pt (after an interruption). The same checks as a
    new run (:func:`check_can_queue`) come first, so resuming cannot step around the limits.
    """
    from engine.training.config import TrainConfig

    check_can_queue(TrainConfig.from_dict(run.config()))  # raises UserError when the folder is not a run
    return _enqueue(run, resume)


def _enqueue(run: Run, resume: bool = False) -> int:
    """Put ``run`` in the queue (checked already) and make sure a dispatcher is up."""
    config = run.config()
    executor = executor_name()  # raises UserError for an unknown TS_EXECUTOR
    if resume and not run.last_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no last.pt checkpoint to resume from; start it again instead")
    run_dir = str(run.path.resolve())
    with queue_lock(), closing(_db()) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT state FROM jobs WHERE run_dir=?", (run_dir,)).fetchone()
            if row is not None and row[0] != "finished":
                raise UserError(f"run '{run.id}' is already {row[0]}; cancel it first")
            # Status before the row: the dispatcher may start the job the moment it exists.
            run.cancel_file.unlink(missing_ok=True)
            run.update_status(state="queued", stage="queued", queued_at=time.time(), error=None,
                              message="queued to resume" if resume else "queued",
                              **({} if resume else {"progress": 0.0}))
            # A resubmitted run goes to the back of the queue: a fresh row, a fresh id.
            db.execute("DELETE FROM jobs WHERE run_dir=?", (run_dir,))
            cur = db.execute("INSERT INTO jobs (run_dir, state, created, resume, nproc, executor) "
                             "VALUES (?, 'queued', ?, ?, ?, ?)",
                             (run_dir, time.time(), int(resume), max(1, int(config.get("nproc") or 1)), executor))
            job_id = int(cur.lastrowid or 0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    ensure_dispatcher()
    return job_id


def _active_jobs_here() -> int:
    """This workspace's runs in the queue or running (by the queue, or by their status)."""
    from engine.runs.run_dir import list_runs

    wid = workspace_id()
    active = {str(Path(job["run_dir"]).resolve()) for job in list_jobs()
              if job["state"] in ("queued", "running") and workspace_of(job["run_dir"]) == wid}
    active |= {str(run.path.resolve()) for run in list_runs()
               if run.status().get("state") in ("queued", "running")}
    return len(active)


def check_can_queue(config) -> None:
    """Before a training run is queued (:func:`queue_new_run`): hosted ceilings, this workspace's
    queue and disk. ``config`` is a TrainConfig. Logs who queues what (a short workspace id, no token)."""
    check_training_ceilings(config.epochs, config.image_size)
    if hosted():
        cap = limits()
        active = _active_jobs_here()
        if active >= cap.max_queued_per_workspace:
            raise UserError(f"this workspace already has {active} training job(s) queued or running, the most "
                            f"allowed (TS_MAX_QUEUED={cap.max_queued_per_workspace}); wait for one to finish "
                            "or cancel one on the Runs page")
        on_server = sum(1 for job in list_jobs() if job["state"] in ("queued", "running"))
        if on_server >= cap.max_queued_on_server:
            raise UserError(f"this server already has {on_server} training jobs queued or running, its limit "
                            f"(TS_MAX_QUEUED_TOTAL={cap.max_queued_on_server}); try again when some have finished")
        check_disk_quota()
    check_free_disk()
    audit("queue", backbone=config.backbone, mode=config.mode, epochs=config.epochs, image_size=config.image_size)


def queue_new_run(config, label: str | None = None) -> Run:
    """Create a run directory for ``config`` (a :class:`TrainConfig`) and queue it, after the queue's own
    checks (:func:`check_can_queue`). What the user can fix first (weights, dataset) is checked by
    ``engine.workflow.queue_run``, the one entry the Train page and the CLI use."""
    check_can_queue(config)  # the hosted ceilings, this workspace's queue and disk quota
    with queue_lock():  # the workspace clean-up never sees this run between its folder and its queue row
        run = new_run(label or f"{config.backbone}-{config.mode}")
        run.write_config(config.to_dict())
        _enqueue(run)
    return run


@contextmanager
def queue_lock() -> Iterator[None]:
    """The queue's lock, across processes and threads (re-entrant within one thread).

    Held while a run's folder is created and queued (:func:`queue_new_run`, :func:`submit`) and by the
    workspace clean-up while it decides what to keep and deletes the rest, so a run submitted meanwhile
    is never deleted.
    """
    if getattr(_QUEUE_LOCK_HELD, "depth", 0):
        _QUEUE_LOCK_HELD.depth += 1
        try:
            yield
        finally:
            _QUEUE_LOCK_HELD.depth -= 1
        return
    with open(home() / "queue.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one open file per holder: threads of one server exclude each other too
        _QUEUE_LOCK_HELD.depth = 1
        try:
            yield
        finally:
            _QUEUE_LOCK_HELD.depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def queue_position(run: Run) -> int | None:
    """1 for the next job to start; None when the run is not waiting."""
    with closing(_db()) as db:
        row = db.execute("SELECT id FROM jobs WHERE run_dir=? AND state='queued'",
                         (str(run.path.resolve()),)).fetchone()
        if row is None:
            return None
        ahead = db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND id<?", (row[0],)).fetchone()[0]
    return ahead + 1


def list_jobs() -> list[dict]:
    with closing(_db()) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]


def cancel(run: Run) -> None:
    """Stop a queued run at once; ask a running one to stop at its next step."""
    run.request_cancel()
    with closing(_db()) as db:
        cur = db.execute("UPDATE jobs SET state='finished', finished=? WHERE run_dir=? AND state='queued'",
                         (time.time(), str(run.path.resolve())))
        if cur.rowcount:
            run.update_status(state="cancelled", stage="cancelled", message="cancelled before it started")


def recover_interrupted() -> list[str]:
    """Runs marked running whose process is gone (server restart, kill): mark them interrupted.

    Only local jobs are checked here; jobs on Ray are the dispatcher's to check (it connects to Ray).
    """
    marked, _ = _recover({"local": LocalExecutor(max_concurrent)})
    return marked


def _recover(executors: dict[str, Executor]) -> tuple[list[str], dict[int, tuple[JobHandle, str, int, str]]]:
    """Check every running job with its executor: found again (adopted) or gone (marked interrupted).

    Jobs whose executor is not in ``executors`` are left as they are.
    """
    marked, adopted = [], {}
    with closing(_db()) as db:
        rows = db.execute("SELECT id, run_dir, pid, ref, executor, nproc FROM jobs WHERE state='running'").fetchall()
        for job_id, run_dir, pid, ref, name, nproc in rows:
            if name not in executors:
                continue
            handle = executors[name].recover(run_dir, pid, ref)
            if handle is not None:
                adopted[job_id] = (handle, run_dir, max(1, nproc or 1), name)
                continue
            db.execute("UPDATE jobs SET state='finished', finished=? WHERE id=?", (time.time(), job_id))
            run = Run(run_dir)
            if run.status().get("state") not in TERMINAL_STATES:
                run.update_status(state="interrupted", stage="interrupted",
                                  error="the worker stopped (server restart or killed); "
                                        "resume from the last checkpoint")
            marked.append(run_dir)
    return marked, adopted


def resume_queue() -> None:
    """On app start: mark dead runs interrupted and restart a dispatcher for waiting jobs (and Ray's running ones)."""
    recover_interrupted()
    with closing(_db()) as db:
        waiting = db.execute("SELECT 1 FROM jobs WHERE state='queued' OR (state='running' AND executor!='local') "
                             "LIMIT 1").fetchone()
    if waiting:
        ensure_dispatcher()


def _lock_path() -> Path:
    return home() / "dispatcher.lock"


def _pid_path() -> Path:
    return home() / "dispatcher.pid"


def _start_path() -> Path:
    """The dispatcher's process start (:func:`process_start`), beside its pid: a pid from before a reboot
    that now names another process does not pass for a live dispatcher."""
    return home() / "dispatcher.start"


def ensure_dispatcher(resident: bool = False) -> None:
    """Start a dispatcher unless a live one holds the lock already (``resident``: one that stays, with a
    warm spare job process; see :func:`dispatch_forever`).

    A dispatcher that was just killed can still hold the lock for a moment (its
    last threads are exiting); then the new one waits for the lock instead of
    concluding that someone will pick the job up.
    """
    with open(_lock_path(), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_path().read_text().strip() if _pid_path().is_file() else ""
            started = _start_path().read_text().strip() if _start_path().is_file() else None
            if holder.isdigit() and pid_alive(int(holder), started):
                return  # one is running; it will pick the job up
            _spawn_dispatcher(wait_for_lock=30.0, resident=resident)
            return
        fcntl.flock(lock, fcntl.LOCK_UN)
    _spawn_dispatcher(resident=resident)


def _spawn_dispatcher(wait_for_lock: float = 0.0, resident: bool = False) -> None:
    argv = ["worker", "--wait-lock", str(wait_for_lock), *(["--resident"] if resident else [])]
    spawn(engine_command(*argv), home() / "dispatcher.log", append=True)


def _start_job(job_id: int, run_dir: str, db: sqlite3.Connection, executor: Executor, resume: bool = False,
               nproc: int = 1) -> JobHandle:
    handle = executor.start(run_dir, resume, nproc)
    db.execute("UPDATE jobs SET state='running', pid=?, ref=?, started=? WHERE id=?",
               (handle.pid, handle.ref, time.time(), job_id))
    return handle


def _fail_unstarted(job_id: int, run_dir: str, error: str, db: sqlite3.Connection) -> None:
    """A queued job whose executor cannot be used here (Ray missing or unreachable): failed, in one line."""
    db.execute("UPDATE jobs SET state='finished', finished=? WHERE id=?", (time.time(), job_id))
    Run(run_dir).update_status(state="failed", stage="failed", error=error, finished_at=time.time())


def _over_time(job_id: int, db: sqlite3.Connection) -> bool:
    """Whether the job has run longer than the wall-clock cap per job (``max_job_hours``)."""
    row = db.execute("SELECT started FROM jobs WHERE id=?", (job_id,)).fetchone()
    return bool(row and row[0]) and time.time() - float(row[0]) > limits().max_job_hours * 3600


def _finish_job(job_id: int, run_dir: str, code: int, db: sqlite3.Connection, failure: str | None = None,
                over_time: bool = False) -> None:
    db.execute("UPDATE jobs SET state='finished', finished=?, exit_code=? WHERE id=?", (time.time(), code, job_id))
    run = Run(run_dir)
    status = run.status()
    if over_time:  # stopped by the dispatcher through its cancel file: say why, whatever the worker wrote
        run.update_status(state="failed", stage="failed", finished_at=time.time(),
                          error=f"stopped after {limits().max_job_hours:g} h, the wall-clock limit per job "
                                "(TS_MAX_JOB_HOURS); resume it from its last checkpoint or train fewer epochs")
    elif status.get("state") not in TERMINAL_STATES and run.cancel_requested():
        run.update_status(state="cancelled", stage="cancelled", message="cancelled by user (stopped)",
                          finished_at=time.time())
    elif status.get("state") not in TERMINAL_STATES:
        # The process died without saying why (killed, segfault, out of memory), or its executor lost it.
        reason = failure or {-signal.SIGKILL: "the worker was killed (often: out of memory)",
                             -signal.SIGTERM: "the worker was terminated"}.get(code,
                                                                               f"the worker exited with code {code}")
        tail = log_tail(run.log_file)
        run.update_status(state="failed", stage="failed", error=f"{reason}{': ' + tail if tail else ''}",
                          finished_at=time.time())


def _acquire(lock, wait_s: float) -> bool:
    deadline = time.time() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.time() >= deadline:
                return False
            time.sleep(0.1)


def dispatch_forever(idle_exit_s: float = 5.0, poll_s: float = 0.5, wait_for_lock: float = 0.0,
                     resident: bool = False) -> None:
    """The dispatcher loop; returns after the queue has been empty for ``idle_exit_s``.

    ``resident`` (started with the app): it keeps a spare job process warm and looks at the queue every
    0.2 s, so a queued job starts in well under a second; it stays for the model idle time
    (``TS_MODEL_IDLE_MINUTES``) unless ``idle_exit_s`` is given."""
    lock = open(_lock_path(), "a")
    if not _acquire(lock, wait_for_lock):
        print(f"{time.strftime('%H:%M:%S')} dispatcher {os.getpid()}: another dispatcher holds the lock", flush=True)
        return
    _start_path().write_text(process_start(os.getpid()) or "")
    _pid_path().write_text(str(os.getpid()))
    print(f"{time.strftime('%H:%M:%S')} dispatcher {os.getpid()}: started", flush=True)
    if resident:
        poll_s = min(poll_s, 0.2)
    executors = ExecutorPool(max_concurrent, warm=resident)
    try:
        _dispatch(lock, executors, idle_exit_s, poll_s)
    finally:
        executors.close()


def _dispatch(lock, executors: ExecutorPool, idle_exit_s: float, poll_s: float) -> None:
    with closing(_db()) as db:
        names = {n for (n,) in db.execute("SELECT DISTINCT executor FROM jobs WHERE state='running'")}
    running = _recover(executors.recoverable(names))[1]
    overdue: set[int] = set()  # jobs past the wall-clock cap, asked to stop
    idle_since = time.time()
    with closing(_db()) as db:
        while True:
            for job_id, (handle, run_dir, _, _) in list(running.items()):
                code = handle.poll()  # also ends a run whose cancel is past its grace period
                if code is not None:
                    _finish_job(job_id, run_dir, code, db, handle.failure, over_time=job_id in overdue)
                    del running[job_id]
                elif job_id not in overdue and _over_time(job_id, db):
                    overdue.add(job_id)
                    Run(run_dir).request_cancel()  # a clean stop first, then enforce_cancel's grace
            while True:
                row = db.execute("SELECT id, run_dir, resume, nproc, executor FROM jobs WHERE state='queued' "
                                 "ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    break
                job_id, run_dir, resume, nproc, name = row[0], row[1], bool(row[2]), max(1, row[3] or 1), row[4]
                try:
                    executor = executors.get(name)
                except UserError as exc:
                    _fail_unstarted(job_id, run_dir, str(exc), db)
                    continue
                mine = [n for _, _, n, e in running.values() if e == name]
                if mine and sum(mine) + nproc > executor.capacity():
                    break  # a job wider than the limit still runs, alone
                running[job_id] = (_start_job(job_id, run_dir, db, executor, resume, nproc), run_dir, nproc, name)
            if running:
                idle_since = time.time()
            elif time.time() - idle_since > idle_exit_s:
                # Unlock first, then look again: a job submitted while we were
                # deciding to stop saw the lock held and is relying on us.
                fcntl.flock(lock, fcntl.LOCK_UN)
                if not db.execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone():
                    return
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # a new dispatcher took over
                idle_since = time.time()
            time.sleep(poll_s)
