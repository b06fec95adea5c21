"""Transfer Studio: the frame around every page (config, navigation, sidebar).

Run with ``streamlit run streamlit_app.py`` (``make run``).
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.runs.jobs import resume_queue
from engine.runs.view import run_label
from app.state import current_backbone, current_dataset, current_run

st.set_page_config(page_title="Transfer Studio", page_icon=":material/model_training:", layout="wide")


@st.cache_resource(show_spinner=False)
def _resume_jobs_once() -> bool:
    # Once per server process: a restart marks dead runs interrupted and restarts
    # the dispatcher for jobs still waiting in the queue.
    resume_queue()
    return True


_resume_jobs_once()

PAGES = [
    st.Page("pages/dataset.py", title="Dataset", icon=":material/folder_open:", default=True),
    st.Page("pages/backbones.py", title="Backbone", icon=":material/hub:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_chart:"),
    st.Page("pages/insight.py", title="Insight", icon=":material/insights:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/troubleshoot:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
page = st.navigation(PAGES)

with st.sidebar:
    st.markdown("### Transfer Studio")
    dataset = current_dataset()
    # An uploaded dataset is a folder path; its name is what people recognise.
    st.markdown(f"**Dataset:** `{Path(dataset).name if '/' in str(dataset) else dataset}`")
    st.markdown(f"**Backbone:** `{current_backbone()}`")
    run = current_run()
    if run is None:
        st.markdown("**Run:** none yet")
    else:
        st.markdown(f"**Run:** {run_label(run)}")

page.run()
