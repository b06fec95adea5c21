"""Runs page: every run in one sortable table; pick several to compare their curves."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.errors import UserError
from engine.runs.table import comparison_rows, curves, rows_to_csv, run_rows
from engine.runs import Run
from engine.workspace import runs_dir
from app.state import set_run, require_frame

require_frame()  # a deep link on a fresh server runs through the frame

st.title("Runs")

rows = run_rows()
if not rows:
    st.info("No runs yet: train a model on the Train page first.")
    st.stop()

table = pd.DataFrame(rows)
shown = ["run", "dataset", "dataset_version", "backbone", "mode", "image_size", "epochs_done", "epochs", "best_val_acc",
         "accuracy", "macro_f1", "seconds", "started", "status"]
event = st.dataframe(
    table[shown],
    hide_index=True,
    on_select="rerun",
    selection_mode="multi-row",
    column_config={
        "dataset_version": st.column_config.TextColumn("dataset version", help="corrections applied (fingerprint)"),
        "best_val_acc": st.column_config.NumberColumn("best val acc", format="%.3f"),
        "accuracy": st.column_config.NumberColumn("accuracy (best ckpt)", format="%.3f"),
        "macro_f1": st.column_config.NumberColumn("macro F1", format="%.3f"),
        "seconds": st.column_config.NumberColumn("time (s)", format="%.0f"),
    },
    key="runs_table",
)
st.download_button("Download runs (CSV)", rows_to_csv(rows), file_name="runs.csv", mime="text/csv",
                   on_click="ignore")

resumable = table[table["resumable"]]
if len(resumable):
    st.subheader("Interrupted runs")
    for run_id in resumable["run"]:
        col1, col2 = st.columns([4, 1])
        col1.write(f"`{run_id}` stopped before finishing; it can continue from its last epoch checkpoint.")
        if col2.button("Resume", key=f"resume-{run_id}"):
            from engine.workflow import resume_run

            try:
                resume_run(Run(runs_dir() / run_id))
                st.success(f"{run_id} queued to resume")
            except UserError as exc:
                st.error(str(exc))

selected = [rows[i]["run"] for i in event.selection.rows] if event and event.selection else []
if not selected:
    st.caption("Select rows in the table to compare runs.")
    st.stop()

runs = [Run(runs_dir() / run_id) for run_id in selected]
if len(runs) == 1 and st.button("Open this run on the other pages"):
    set_run(runs[0])

st.subheader("Compare")
for metric, title in (("val_acc", "validation accuracy"), ("val_loss", "validation loss")):
    fig = go.Figure()
    for run in runs:
        series = curves(run)
        fig.add_trace(go.Scatter(x=series["epoch"], y=series[metric], mode="lines+markers", name=run.id))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric, height=340)
    st.plotly_chart(fig, use_container_width=True)

compare = comparison_rows(runs)
st.dataframe(pd.DataFrame(compare), hide_index=True)
st.download_button("Download comparison (CSV)", rows_to_csv(compare), file_name="runs-compare.csv",
                   mime="text/csv", on_click="ignore")
