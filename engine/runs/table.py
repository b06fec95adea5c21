"""Rows for the runs table and the run-comparison view (pages/runs.py is only the view)."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from engine.runs.run_dir import Run, list_runs

__all__ = ["run_row", "run_rows", "curves", "comparison_rows", "rows_to_csv"]


def _best(metrics: list[dict], key: str, better=max):
    values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
    return better(values) if values else None


def _version(resolved: dict) -> str | None:
    fingerprint = resolved.get("dataset_fingerprint")
    if not fingerprint:
        return None
    return f"{resolved.get('dataset_version', 'original')} ({fingerprint[:8]})"


def run_row(run: Run) -> dict:
    """One line of the runs table: what the run was, how far it got, how good it is."""
    try:
        cfg = run.config()
    except Exception:
        cfg = {}
    status = run.status()
    metrics = run.metrics()
    evaluation = run.evaluation() or {}
    resolved = cfg.get("resolved") or {}
    started = status.get("started_at")
    finished = status.get("finished_at")
    if status.get("duration_s") is not None:
        duration = status["duration_s"]
    elif started:
        duration = round((finished or time.time()) - started, 1)
    else:
        duration = None
    dataset = resolved.get("dataset_name") or Path(str(cfg.get("dataset", ""))).name or cfg.get("dataset")
    return {
        "run": run.id,
        "dataset": dataset,
        # The version trained on: its corrections in words and the fingerprint of what training read.
        "dataset_version": _version(resolved),
        "backbone": cfg.get("backbone"),
        "mode": cfg.get("mode"),
        "image_size": resolved.get("image_size", cfg.get("image_size")),
        "epochs_done": len(metrics),
        "epochs": cfg.get("epochs"),
        "best_val_acc": _best(metrics, "val_acc"),
        "best_val_loss": _best(metrics, "val_loss", min),
        "accuracy": evaluation.get("accuracy"),
        "macro_f1": evaluation.get("macro_f1"),
        "seconds": duration,
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else None,
        "status": status.get("state", "unknown"),
        "resumable": status.get("state") in ("interrupted", "cancelled", "failed") and run.last_checkpoint.is_file(),
    }


def run_rows(root: Path | None = None) -> list[dict]:
    try:
        runs = list_runs(root)
    except FileNotFoundError:
        return []
    return [run_row(r) for r in runs]


def curves(run: Run) -> dict[str, list]:
    """Per-epoch series for plotting: epoch, train/val loss, train/val accuracy."""
    keys = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr")
    metrics = run.metrics()
    return {k: [m.get(k) for m in metrics] for k in keys}


def comparison_rows(runs: list[Run]) -> list[dict]:
    """The metrics table for the selected runs, plus their config differences."""
    rows = []
    for run in runs:
        row = run_row(run)
        try:
            cfg = run.config()
        except Exception:
            cfg = {}
        for key in ("lr", "batch_size", "augment", "label_smoothing", "unfreeze_stages", "seed"):
            row[key] = cfg.get(key)
        row.pop("resumable", None)
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
