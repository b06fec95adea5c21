"""Runs page and the engine rows behind it: table, comparison curves, CSV, resume button."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from engine.runs.table import comparison_rows, curves, rows_to_csv, run_row, run_rows
from engine.runs import Run, new_run

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "runs.py")


def _interrupted_copy(trained_run) -> Run:
    """A run that stopped after its first epoch: a copy of the fixture with status set so."""
    run = new_run("interrupted-copy")
    for name in ("config.json", "metrics.jsonl", "best.pt"):
        shutil.copy(trained_run.path / name, run.path / name)
    shutil.copy(trained_run.path / "best.pt", run.last_checkpoint)
    run.update_status(state="interrupted", stage="interrupted", error="the worker stopped")
    return run


def test_rows_describe_each_run(trained_run):
    row = run_row(trained_run)
    metrics = trained_run.metrics()
    assert row["run"] == trained_run.id
    assert row["backbone"] == "mobilenet_v2" and row["mode"] == "linear" and row["status"] == "done"
    assert row["best_val_acc"] == max(m["val_acc"] for m in metrics)
    assert row["epochs_done"] == len(metrics) and row["seconds"] > 0
    assert row["resumable"] is False
    assert trained_run.id in [r["run"] for r in run_rows()]
    series = curves(trained_run)
    assert series["epoch"] == [m["epoch"] for m in metrics]
    assert series["val_loss"] == [m["val_loss"] for m in metrics]


def test_comparison_csv_round_trips(trained_run):
    other = _interrupted_copy(trained_run)
    rows = comparison_rows([trained_run, other])
    assert [r["run"] for r in rows] == [trained_run.id, other.id]
    assert rows[1]["status"] == "interrupted" and rows[0]["lr"] == rows[1]["lr"]
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert [r["run"] for r in parsed] == [trained_run.id, other.id]
    assert float(parsed[0]["best_val_acc"]) == rows[0]["best_val_acc"]
    assert run_row(other)["resumable"] is True


def test_page_lists_runs_and_offers_resume(trained_run):
    other = _interrupted_copy(trained_run)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert trained_run.id in list(table["run"]) and other.id in list(table["run"])
    assert {"dataset", "backbone", "mode", "best_val_acc", "seconds", "status"} <= set(table.columns)
    assert any(b.key == f"resume-{other.id}" for b in at.button)
    assert not any(b.key == f"resume-{trained_run.id}" for b in at.button)
