"""Jobs: the queue that trains runs and the background tasks, above every ML layer.

``engine.jobs.queue``         SQLite job queue + detached dispatcher (``engine.workflow`` queues runs through it)
``engine.jobs.executors``     where a queued job runs (local process, torchrun)
``engine.jobs.ray_executor``  the optional Ray executor
``engine.jobs.tasks``         the one way to start, watch and cancel ``python -m engine ...`` processes
``engine.jobs.view``          labels, exported runs, image-size suggestion for the pages
"""
