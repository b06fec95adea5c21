"""The data loop: wrong labels found and corrected as an overlay (labels, overlay), images to label next
(pool, active). Whether a new batch is unlike the training data is an evaluation question, answered beside
the per-image OOD score (:mod:`engine.evaluation.shift`). Import the modules themselves."""

__all__: list[str] = []
