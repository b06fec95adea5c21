"""Transfer Studio: the frame around every page (config, navigation, sidebar).

Run with ``streamlit run streamlit_app.py`` (``make run``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from engine.export.inference import release_idle_models
from engine.hosting.access import open_server_warning
from engine.hosting.health import startup_refusal
from engine.settings.audit import LOGGER, configure_logging
from engine.settings.profile import hosted
from engine.hosting.cleanup import remove_idle_workspaces
from engine.workflow import restart_queue
from engine.jobs.view import run_label
from app.access import apply_error_policy, require_access
from app.stale_fragment_reruns import install as drop_stale_fragment_timers
from app.sidebar import workspace_panel
from app.state import app_secrets, current_backbone, current_dataset, current_run, select_workspace, share_param

drop_stale_fragment_timers()  # a polling page's timer must not undo a sidebar click (see the module)
st.set_page_config(page_title="Transfer Studio", page_icon=":material/model_training:", layout="wide")
apply_error_policy()  # hosted: no tracebacks (server paths) for visitors
_refusal = startup_refusal()  # e.g. a data root that holds every visitor's files: refused before any page
if _refusal:
    logging.getLogger(LOGGER).error(_refusal)
    st.error(_refusal)
    st.stop()


@st.cache_resource(show_spinner=False)
def _resume_jobs_once() -> bool:
    # Once per server process: a restart marks dead runs interrupted and restarts
    # the dispatcher for jobs still waiting in the queue; who-did-what lines go to the server's log.
    configure_logging()
    warning = open_server_warning(app_secrets())
    if warning:
        logging.getLogger(LOGGER).warning(warning)
    restart_queue()
    return True


_resume_jobs_once()


@st.cache_resource(ttl=3600, show_spinner=False)
def _remove_idle_workspaces_hourly() -> bool:
    # Hosted: workspaces past their time-to-live go (never a shared, queued or running run);
    # `python -m engine cleanup` from cron does the same.
    if hosted():
        remove_idle_workspaces()
    return True


_remove_idle_workspaces_hourly()
release_idle_models()  # models no session has used for TS_MODEL_IDLE_MINUTES

if share_param() is not None:
    # A share link opens the model demo of one run and nothing else: no gate, no workspace, no sidebar.
    st.navigation([st.Page("pages/demo.py", title="Model demo", icon=":material/image_search:")],
                  position="hidden").run()
    st.stop()

require_access()  # login or password, when an operator configured one
select_workspace()  # hosted: this visitor's own workspace

PAGES = [
    st.Page("pages/dataset.py", title="Dataset", icon=":material/folder_open:", default=True),
    st.Page("pages/label.py", title="Label", icon=":material/label:"),
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
    workspace_panel()

page.run()
