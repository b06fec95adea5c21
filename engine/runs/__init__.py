"""Runs: the run directory, the job queue that trains them, background tasks, read-only views.

``engine.runs.run_dir``  the run directory (single source of truth of a run)
``engine.runs.jobs``     SQLite job queue + detached dispatcher; ``queue_run`` checks and queues a run
``engine.runs.tasks``    the one way to start, watch and cancel ``python -m engine ...`` processes
``engine.runs.table``    rows for the runs table and comparison view
``engine.runs.view``     labels, settledness, image-size suggestion for the pages
"""
from engine.runs.run_dir import TERMINAL_STATES, Run, list_runs, new_run

__all__ = ["Run", "new_run", "list_runs", "TERMINAL_STATES"]
