"""Jobs: the queue that trains runs and the background tasks, above every ML layer.

``engine.jobs.queue``         SQLite job queue + detached dispatcher; ``queue_run`` checks and queues a run
``engine.jobs.executors``     where a queued job runs (local process, torchrun)
``engine.jobs.ray_executor``  the optional Ray executor
``engine.jobs.tasks``         the one way to start, watch and cancel ``python -m engine ...`` processes
``engine.jobs.view``          labels, settledness, image-size suggestion for the pages
"""
