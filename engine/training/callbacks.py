"""Progress reporting from the training loop, through callbacks rather than prints."""
from __future__ import annotations

import time

from engine.runs import Run

__all__ = ["Callback", "Fanout", "RunDirCallback", "CancelledByUser"]


class CancelledByUser(Exception):
    pass


class Callback:
    def on_stage(self, stage: str, message: str = "") -> None: ...
    def on_train_start(self) -> None: ...
    def on_progress(self, done: int, total: int, stage: str) -> None: ...
    def on_batch_end(self, loss: float) -> None: ...
    def on_resume(self, epoch: int) -> None:
        """Training continues after ``epoch`` (from a checkpoint)."""
    def on_epoch_end(self, record: dict) -> None: ...
    def should_stop(self) -> bool:
        return False


class Fanout(Callback):
    """Several callbacks as one: each hook goes to all of them in order; any may ask to stop."""

    def __init__(self, callbacks):
        self.callbacks = callbacks

    def on_stage(self, *a, **k):
        for c in self.callbacks:
            c.on_stage(*a, **k)

    def on_train_start(self):
        for c in self.callbacks:
            c.on_train_start()

    def on_progress(self, *a, **k):
        for c in self.callbacks:
            c.on_progress(*a, **k)

    def on_batch_end(self, loss):
        for c in self.callbacks:
            c.on_batch_end(loss)

    def on_resume(self, epoch):
        for c in self.callbacks:
            c.on_resume(epoch)

    def on_epoch_end(self, record):
        for c in self.callbacks:
            c.on_epoch_end(record)

    def should_stop(self):
        return any(c.should_stop() for c in self.callbacks)


class RunDirCallback(Callback):
    """Writes status.json and metrics.jsonl as training goes; watches for cancel."""

    def __init__(self, run: Run, epochs: int, min_interval: float = 0.5):
        self.run = run
        self.epochs = epochs
        self.min_interval = min_interval
        self._last_write = 0.0
        self._train_started = time.time()
        self._epoch = 0
        self._start_epoch = 0

    def on_stage(self, stage: str, message: str = "") -> None:
        self.run.update_status(state="running", stage=stage, message=message)
        self._last_write = time.time()

    def on_progress(self, done: int, total: int, stage: str) -> None:
        now = time.time()
        if now - self._last_write < self.min_interval and done < total:
            return
        self._last_write = now
        fields = {"stage": stage, "step": done, "steps": total}
        if stage == "train":
            fraction = (self._epoch + done / max(total, 1)) / self.epochs
            # ETA from this process's pace only (a resumed run starts part-way through).
            since_start = (self._epoch - self._start_epoch + done / max(total, 1)) / self.epochs
            elapsed = now - self._train_started
            fields["epoch"] = self._epoch + 1
            fields["epochs"] = self.epochs
            fields["progress"] = round(fraction, 4)
            fields["eta_s"] = round(elapsed * (1 - fraction) / since_start, 1) if since_start > 0 else None
        else:
            fields["stage_progress"] = round(done / max(total, 1), 4)
        self.run.update_status(state="running", **fields)

    def on_resume(self, epoch: int) -> None:
        self._epoch = epoch

    def on_train_start(self) -> None:
        self._train_started = time.time()
        self._start_epoch = self._epoch

    def on_epoch_end(self, record: dict) -> None:
        self._epoch = record["epoch"]
        self.run.append_metrics(record)
        self.run.update_status(state="running", epoch=record["epoch"], epochs=self.epochs,
                               progress=round(record["epoch"] / self.epochs, 4))

    def should_stop(self) -> bool:
        return self.run.cancel_requested()
