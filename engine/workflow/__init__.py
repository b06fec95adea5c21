"""The workflow: the one place a run is queued, run and followed, and background tasks are started and polled.

Layer 9: above the job machinery (``engine.jobs``) and hosting; below the CLI and the pages, which both
call it and nothing beneath it to start or follow work.

``engine.workflow.runs``   queue a run (checks, limits), the job itself (train, headline figures, "done",
                           then evaluation and export as its follow-up), resume, cancel, settled
``engine.workflow.tasks``  evaluation, export, LR finder, sweep, embedding map, insight: start and state
``engine.workflow.dataloop`` the data loop's tasks: the label-issue search, a label pool's features
"""
from engine.workflow.runs import (FOLLOW_UP_STAGES, cancel_run, failure_details, follow_up, queue_run, queue_view,
                                  restart_queue, resume_run, run_job, run_settled)
from engine.workflow.tasks import (EXPORT_LOG, cancel_sweep, embedding_status, evaluation_state, export_job_state,
                                   export_progress, insight_state, lr_find_state, start_embedding_map,
                                   start_evaluation, start_export_job, start_insight, start_lr_find, start_sweep,
                                   sweep_status)

__all__ = ["FOLLOW_UP_STAGES", "cancel_run", "failure_details", "follow_up", "queue_run", "queue_view",
           "restart_queue", "resume_run", "run_job", "run_settled", "EXPORT_LOG", "cancel_sweep", "embedding_status",
           "evaluation_state", "export_job_state", "export_progress", "insight_state", "lr_find_state",
           "start_embedding_map", "start_evaluation", "start_export_job", "start_insight", "start_lr_find",
           "start_sweep", "sweep_status"]
