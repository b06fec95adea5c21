"""Transfer gain: from scratch against linear probe against fine-tune, from the user's own runs.

Rows come from the runs table (``engine.runs.table.run_rows``): finished runs of
the same dataset and backbone, the best of each kind (scratch, linear probe,
fine-tune of any depth), with their budget (epochs, image size, seconds) beside the
accuracy and its 95 % interval when the run was evaluated. ``quick_gain_configs``
gives the three short runs, at one shared budget, that fill the table when the user
has none.
"""
from __future__ import annotations

from pathlib import Path

from engine.runs.table import run_rows
from engine.training.config import TrainConfig

__all__ = ["KINDS", "gain_rows", "quick_gain_configs", "dataset_label"]

KINDS = {"scratch": "from scratch", "linear": "linear probe", "partial": "fine-tune", "gradual": "fine-tune",
         "full": "fine-tune"}


def dataset_label(spec: str) -> str:
    """The dataset name as the runs table records it."""
    return Path(str(spec)).name if "/" in str(spec) else str(spec)


def _interval(run_id: str) -> tuple[float | None, float | None]:
    from engine.evaluation import load_evaluation
    from engine.workspace import runs_dir

    try:
        stored = load_evaluation(runs_dir() / run_id)
    except Exception:
        return None, None
    if stored is None:
        return None, None
    acc = (stored.summary.get("headline") or {}).get("accuracy") or {}
    return acc.get("low"), acc.get("high")


def gain_rows(spec: str, backbone: str) -> list[dict]:
    """The best finished run of each kind for this dataset and backbone (empty when there is none)."""
    name = dataset_label(spec)
    best: dict[str, dict] = {}
    for row in run_rows():
        if row.get("status") != "done" or row.get("dataset") != name or row.get("backbone") != backbone:
            continue
        kind = KINDS.get(str(row.get("mode")))
        acc = row.get("accuracy") if row.get("accuracy") is not None else row.get("best_val_acc")
        if kind is None or acc is None:
            continue
        if kind not in best or acc > best[kind]["accuracy"]:
            best[kind] = {"kind": kind, "run": row["run"], "mode": row["mode"], "epochs": row.get("epochs_done"),
                          "image_size": row.get("image_size"), "seconds": row.get("seconds"),
                          "accuracy": float(acc)}
    rows = [best[k] for k in ("from scratch", "linear probe", "fine-tune") if k in best]
    for r in rows:
        r["ci_low"], r["ci_high"] = _interval(r["run"])
    return rows


def quick_gain_configs(spec: str, backbone: str, image_size: int, epochs: int = 3) -> list[TrainConfig]:
    """Scratch, linear probe and full fine-tune at one budget (``epochs``, ``image_size``)."""
    return [TrainConfig(dataset=str(spec), backbone=backbone, mode=mode, epochs=1 if mode == "linear" else epochs,
                        image_size=image_size) for mode in ("scratch", "linear", "full")]
