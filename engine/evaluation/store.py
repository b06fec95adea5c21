"""Where a run's evaluation is kept and how it is read back (cached per file version).

Files under ``RUN_DIR/evaluation/``::

    evaluation.json       headline metrics with 95 % bootstrap intervals, per-class table,
                          confusion matrix, calibration (temperature, reliability, ECE),
                          threshold curve, OOD calibration, overfitting reading, galleries
    predictions.parquet   one row per validation image: path, file, true/predicted class,
                          calibrated probabilities, confidence, OOD score
    ood_reference.npz     training features + validation OOD scores (see :mod:`engine.evaluation.ood`)
    task.json, task.log   the background evaluation a page started (``engine.workflow``)

The fitted temperature stored here is the one export and prediction use. An evaluation names the
checkpoint it scored (sha256), so a resumed run's old evaluation reads as stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.evaluation.ood import OODReference, load_reference
from engine.idle_cache import IdleCache
from engine.runs import Run
from engine.workspace import file_sha256, read_json

__all__ = ["EVALUATION_FORMAT", "evaluation_dir", "evaluation_files", "checkpoint_digest", "is_stale",
           "RunEvaluation", "load_evaluation", "run_temperature", "run_ood_reference", "idle_seconds"]

EVALUATION_FORMAT = 1


def evaluation_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / "evaluation"


def evaluation_files(run_dir: Path | str) -> dict[str, Path]:
    folder = evaluation_dir(run_dir)
    return {"summary": folder / "evaluation.json", "predictions": folder / "predictions.parquet",
            "ood": folder / "ood_reference.npz"}


_DIGESTS: dict[tuple[str, float, int], str] = {}


def checkpoint_digest(run: Run) -> str | None:
    """sha256 of best.pt (cached per path, mtime and size): copies of a run stay evaluated, new weights do not."""
    ckpt = run.best_checkpoint
    if not ckpt.is_file():
        return None
    stat = ckpt.stat()
    key = (str(ckpt.resolve()), stat.st_mtime, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(ckpt)
    return _DIGESTS[key]


def is_stale(run: Run, summary: dict) -> bool:
    digest = checkpoint_digest(run)
    return digest is not None and digest != summary.get("checkpoint_sha256")


@dataclass


@dataclass
class RunEvaluation:
    """What the Evaluate page and the CLI read: the summary and the per-image table."""
    run: Run
    summary: dict
    predictions: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        return self.summary["classes"]

    @property
    def stale(self) -> bool:
        """The best checkpoint changed after this evaluation (e.g. the run was resumed)."""
        return is_stale(self.run, self.summary)

    def cell(self, true_class: str, predicted_class: str) -> pd.DataFrame:
        """The images of one confusion-matrix cell, most confident first."""
        p = self.predictions
        rows = p[(p["label_name"] == true_class) & (p["pred_name"] == predicted_class)]
        return rows.sort_values("confidence", ascending=False)

    def gallery(self, name: str) -> pd.DataFrame:
        """``confident_mistakes`` or ``least_certain``, in their stored order."""
        order = self.summary["galleries"][name]
        return self.predictions.set_index("index").loc[order].reset_index()

    def table(self) -> pd.DataFrame:
        """The per-image table for display and CSV: one probability column per class."""
        p = self.predictions.drop(columns=["probs"]).copy()
        probs = np.stack(self.predictions["probs"].to_numpy()) if len(p) else np.zeros((0, len(self.classes)))
        for i, c in enumerate(self.classes):
            p[f"p({c})"] = probs[:, i]
        return p


def idle_seconds() -> float:
    """How long an unused cached evaluation or model is kept (the hosted model idle time)."""
    from engine.settings.limits import limits

    return limits().model_idle_minutes * 60


# Per file version, released when no session has used them for the idle time (bounded in number).
_CACHE: IdleCache[RunEvaluation | None] = IdleCache(idle_seconds, max_entries=16)


def load_evaluation(run_dir: Path | str) -> RunEvaluation | None:
    """The stored evaluation of a run (cached per file version), or None when there is none."""
    run = Run(run_dir)
    files = evaluation_files(run.path)
    if not files["summary"].is_file() or not files["predictions"].is_file():
        return None
    return _CACHE.get(str(files["summary"].resolve()), files["summary"].stat().st_mtime,
                      lambda: _read_evaluation(run, files))


def _read_evaluation(run: Run, files: dict) -> RunEvaluation | None:
    summary = read_json(files["summary"])
    if not summary or summary.get("format") != EVALUATION_FORMAT:
        return None
    try:
        predictions = pd.read_parquet(files["predictions"])
    except Exception:  # half-copied or damaged: evaluate again
        return None
    return RunEvaluation(run, summary, predictions)


def run_temperature(run_dir: Path | str) -> dict | None:
    """The calibration the run's evaluation fitted (``temperature`` and how), or None when the run has
    no evaluation of its current weights."""
    run = Run(run_dir)
    summary = read_json(evaluation_files(run.path)["summary"])
    if not summary or "calibration" not in summary:
        return None
    return None if is_stale(run, summary) else summary["calibration"]


def run_ood_reference(run_dir: Path | str) -> OODReference | None:
    return load_reference(evaluation_files(run_dir)["ood"])

