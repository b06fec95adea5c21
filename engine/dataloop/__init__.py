"""The data loop: wrong labels found and corrected as an overlay (labels, overlay), images to label next
(pool, active) and new batches unlike the training data (shift). Import the modules themselves."""

__all__: list[str] = []
