"""The export as a background task: the Export page starts ``python -m engine export`` and polls it.

Export of a 224 px model with every variant takes about a minute on 2 cores: too
long for a page script. The task's folder is ``RUN_DIR/export/`` (``task.json``,
``export.log``), through :mod:`engine.jobs.tasks`, so any server process sees it.
"""
from __future__ import annotations

from pathlib import Path

from engine.errors import UserError
from engine.export.variants import check_variants
from engine.runs import Run
from engine.jobs.tasks import start_task, task_state

__all__ = ["start_export_job", "export_job_state", "EXPORT_LOG"]

EXPORT_LOG = "export.log"


def export_job_state(run_dir: Path | str) -> dict | None:
    """The run's export task: ``state`` running | done | failed (with ``error``), ``variants``.

    None when no export was started from a page.
    """
    return task_state(Run(run_dir).export_dir, None, log_name=EXPORT_LOG)


def start_export_job(run_dir: Path | str, variants: list[str]) -> dict:
    """Start ``python -m engine export RUN_DIR --variants ...`` detached; refuse a second one for the run."""
    run = Run(run_dir)
    variants = check_variants(variants)  # unknown names fail here, not in the child
    if not run.best_checkpoint.is_file():
        raise UserError(f"run '{run.id}' has no trained weights yet; train it first")
    state = export_job_state(run.path)
    if state and state.get("state") == "running":
        raise UserError("an export of this run is already running; wait for it to finish")
    return start_task(run.export_dir, ["export", str(run.path), "--variants", ",".join(variants)], None,
                      log_name=EXPORT_LOG, info={"variants": variants})
