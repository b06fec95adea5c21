"""Runs: the run directory, the single source of truth of a run, and read-only tables of runs.

A ground-floor package: it stands only on ``engine.errors`` and ``engine.workspace``, so training,
evaluation and export can read and write a run without reaching up to the job queue.

``engine.runs.run_dir``  the run directory (config, status, metrics, checkpoints, evaluation, exports)
``engine.runs.table``    rows for the runs table and comparison view

The queue that trains runs and the background tasks live one floor up, in :mod:`engine.jobs`.
"""
from engine.runs.run_dir import TERMINAL_STATES, Resolved, Run, list_runs, new_run

__all__ = ["Run", "Resolved", "new_run", "list_runs", "TERMINAL_STATES"]
