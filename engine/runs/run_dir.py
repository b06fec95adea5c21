"""The run directory: the single source of truth for one training run.

Layout::

    RUN_DIR/config.json     what was asked for (TrainConfig)
    RUN_DIR/status.json     state, stage, progress, ETA, error (rewritten atomically)
    RUN_DIR/metrics.jsonl   one line per epoch
    RUN_DIR/log.txt         the worker's output
    RUN_DIR/best.pt         best weights (by validation loss) + config + classes
    RUN_DIR/last.pt         last epoch, with optimiser state, for resume
    RUN_DIR/eval.json       validation metrics of the best weights
    RUN_DIR/export/         model.onnx and its preprocessing sidecar
    RUN_DIR/cancel          present when someone asked the run to stop
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.errors import UserError
from engine.workspace import read_json, runs_dir, write_json_atomic

__all__ = ["Run", "Resolved", "new_run", "list_runs", "TERMINAL_STATES"]

TERMINAL_STATES = {"done", "failed", "cancelled", "interrupted"}


@dataclass(frozen=True)
class Resolved:
    """What training resolved from the config before its first step (config.json's ``"resolved"``): the
    one definition of those keys, written by the trainer and read by evaluation, export and the benches."""
    image_size: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False
    num_train: int = 0
    num_val: int = 0
    num_test: int = 0
    world_size: int = 1
    threads: int | None = None
    dataset_name: str | None = None
    dataset_fingerprint: str | None = None
    dataset_version: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Resolved":
        """Known keys only: a run written by an older or newer version still reads."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def of(cls, config: dict, run_id: str = "this run") -> "Resolved":
        """What a run's config.json (as a dict) records as resolved; a clear error before training has started."""
        resolved = config.get("resolved")
        if not resolved:
            raise UserError(f"run '{run_id}' has not started training yet (nothing resolved in its config.json)")
        return cls.from_dict(resolved)


class Run:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    # files ------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    log_file = property(lambda self: self.path / "log.txt")
    best_checkpoint = property(lambda self: self.path / "best.pt")
    last_checkpoint = property(lambda self: self.path / "last.pt")
    eval_file = property(lambda self: self.path / "eval.json")
    # The best checkpoint's validation logits and features from training's own pass, for the evaluation.
    val_outputs_file = property(lambda self: self.path / "val_outputs.npz")
    export_dir = property(lambda self: self.path / "export")
    onnx_file = property(lambda self: self.path / "export" / "model.onnx")
    cancel_file = property(lambda self: self.path / "cancel")

    # reading ----------------------------------------------------------
    def exists(self) -> bool:
        return self.config_file.is_file()

    def config(self) -> dict:
        cfg = read_json(self.config_file)
        if cfg is None:
            raise UserError(f"'{self.path}' is not a run directory (no config.json)")
        return cfg

    def resolved(self) -> Resolved:
        """What training resolved (image size, classes, normalisation, device...), typed."""
        return Resolved.of(self.config(), self.id)

    def status(self) -> dict:
        return read_json(self.status_file, default={"state": "unknown"})

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        out = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written right now
        return out

    def evaluation(self) -> dict | None:
        return read_json(self.eval_file)

    # writing ----------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.config_file, config)

    def update_status(self, **fields) -> dict:
        status = self.status()
        if status.get("state") == "unknown":
            status = {}
        status.update(fields)
        status["updated_at"] = time.time()
        write_json_atomic(self.status_file, status)
        return status

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def request_cancel(self) -> None:
        self.cancel_file.write_text(str(time.time()))

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()


def new_run(label: str, root: Path | None = None) -> Run:
    """A fresh, uniquely named run directory."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40]
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"
    path = Path(root or runs_dir()) / run_id
    path.mkdir(parents=True, exist_ok=False)
    return Run(path)


def list_runs(root: Path | None = None) -> list[Run]:
    root = Path(root or runs_dir())
    if not root.is_dir():
        return []  # a workspace nothing was written to yet
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: r.id, reverse=True)
