"""A training run from the click to the last figure: queue it, run it, resume it, follow it.

The job (what the dispatcher starts as ``python -m engine run-job RUN_DIR``) is
train → headline figures → "done" → follow-up. The headline figures (accuracy,
balanced accuracy, macro-F1, per-class table, confusion matrix) come from the
predictions training already made on the best checkpoint (``eval.json``), so the run
is ``done`` the moment its last epoch is scored. The slower rest, the full evaluation
(bootstrap intervals, calibration, galleries, OOD reference) and the ONNX export with
its parity check, follows in the same process with its own visible state, the
status's ``follow_up``: ``{"state": running | done | stopped, "stage": evaluate |
export, ...}``. A failure there never fails the run: the run stays usable and the
Evaluate and Export pages can retry.
"""
from __future__ import annotations

import os
import socket
import sys
import time

from engine.errors import UserError
from engine.jobs import queue
from engine.jobs.tasks import pid_alive, process_start
from engine.runs import TERMINAL_STATES, Run

__all__ = ["queue_run", "resume_run", "restart_queue", "cancel_run", "queue_view", "run_job", "follow_up",
           "failure_details", "run_settled", "FOLLOW_UP_STAGES"]

FOLLOW_UP_STAGES = ("evaluate", "export")


def queue_run(config, label: str | None = None) -> Run:
    """Check what the user can fix, then create the run directory and queue it (the Train page, ``train --queue``).

    ``config`` is a :class:`engine.training.config.TrainConfig`. Raises :class:`UserError` (or
    ``ImageProblem``) for an unknown backbone, pretrained weights missing on this machine, a dataset
    that does not load, or a limit (:func:`engine.jobs.queue.check_can_queue`), before any run directory exists.
    """
    from engine.data.dataset import load_dataset
    from engine.models import get_spec, weights_available

    queue.check_can_queue(config)  # the cheap refusals first: no dataset scan for a request over a limit
    spec = get_spec(config.backbone)
    if config.mode != "scratch":
        ok, source = weights_available(spec)
        if not ok:
            raise UserError(f"the pretrained weights of {config.backbone} are not on this machine ({source}); "
                            "pick an available backbone or train from scratch")
    load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    return queue.queue_new_run(config, label)


def resume_run(run: Run) -> None:
    """Queue ``run`` to continue from its last epoch checkpoint (the same limits as a new run)."""
    queue.submit(run, resume=True)


def restart_queue(resident: bool = True) -> None:
    """On app start: mark runs whose worker died interrupted, restart the dispatcher for waiting jobs, and
    (``resident``) start the resident one with its warm spare job process, so the first click starts at once."""
    queue.resume_queue()
    if resident:
        queue.ensure_dispatcher(resident=True)


def cancel_run(run: Run) -> None:
    """Stop a queued run at once; ask a running one to stop at its next step."""
    queue.cancel(run)


def queue_view(run: Run) -> int | None:
    """A queued run's place in the queue (1: next). Restarts the dispatcher if it died, so a page that
    shows a waiting run also keeps the queue moving."""
    queue.ensure_dispatcher(resident=True)
    return queue.queue_position(run)


def follow_up(run: Run) -> dict | None:
    """The run's follow-up after "done" (evaluation, export), or None when it has none (older runs, CLI ``train``).

    A follow-up recorded as running whose process is gone (a server restart) reads ``stopped``."""
    status = run.status()
    fu = status.get("follow_up")
    if not isinstance(fu, dict):
        return None
    here = fu.get("host") in (None, socket.gethostname())  # a job on a Ray node: its pid is not ours to check
    if fu.get("state") == "running" and here and not pid_alive(fu.get("pid"), fu.get("pid_start")):
        return {**fu, "state": "stopped",
                "error": "the evaluation and export after training stopped (the worker ended); "
                         "start them from the Evaluate and Export pages"}
    return fu


def failure_details(run: Run, lines: int = 30) -> str | None:
    """For a failed run's bug report: its recorded traceback, else the last ``lines`` lines of its job's log."""
    details = run.status().get("traceback")
    if not details and run.log_file.is_file():
        details = "\n".join(run.log_file.read_text(errors="replace").splitlines()[-lines:])
    return details or None


def run_settled(run: Run) -> bool:
    """True when nothing will change the run any more: a terminal state and no follow-up still running."""
    if run.status().get("state") not in TERMINAL_STATES:
        return False
    fu = follow_up(run)
    return fu is None or fu.get("state") != "running"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_job(run: Run, resume: bool = False, callbacks: list | None = None) -> int:
    """The queued job: train the run from its config.json; "done" with the headline figures; then the follow-up.

    Returns the process exit status (0 also for a cancelled run:
    its state says so)."""
    from engine.training.callbacks import CancelledByUser
    from engine.training.config import TrainConfig
    from engine.training.runner import train

    config = TrainConfig.from_dict(run.config())
    try:
        train(config, run, callbacks=callbacks, resume=resume, finish=False)
    except CancelledByUser:
        return 0
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 goes on
    pid = os.getpid()
    stages = {"evaluate": "evaluating: confidence intervals, calibration, galleries, OOD reference",
              "export": "exporting to ONNX and checking parity"}

    def stage(name: str, **fields) -> dict:
        return {"state": "running", "stage": name, "message": stages[name], "pid": pid, "host": socket.gethostname(),
                "pid_start": process_start(pid), "started_at": time.time(), **fields}

    # The headline figures are in eval.json already: the user sees the result now. One write, so no reader
    # sees "done" without the follow-up that is still to come.
    run.update_status(state="done", stage="done", message="", follow_up=stage("evaluate"))
    evaluation_error = None
    try:
        from engine.evaluation import evaluate_run

        evaluate_run(run.path)  # before export: export uses the temperature it fits
    except Exception as exc:  # the run stays usable; the Evaluate page can retry
        evaluation_error = str(exc)
        _say(f"evaluation failed: {exc}")
    extra = {"evaluation_error": evaluation_error} if evaluation_error else {}
    run.update_status(follow_up=stage("export", **extra))
    try:
        from engine.export import export_run

        outcome = export_run(run.path)
    except Exception as exc:  # training succeeded; the run stays usable without an export
        outcome = {"passed": False, "error": str(exc)}
    run.update_status(export=outcome, follow_up={"state": "done", "finished_at": time.time(), **extra})
    return 0
