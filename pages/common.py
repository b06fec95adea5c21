"""State shared by every page: the current dataset, backbone and run.

Each lives in ``st.session_state`` and is mirrored in ``st.query_params`` so a
refresh or a shared link reopens the same dataset and run.
"""
from __future__ import annotations

import streamlit as st

from engine.data.builtin import DEFAULT_DATASET
from engine.runs import Run
from engine.workspace import runs_dir

DEFAULT_BACKBONE = "mobilenet_v2"

_DEFAULTS = {"dataset": DEFAULT_DATASET, "backbone": DEFAULT_BACKBONE, "run": None}


def _get(key: str):
    if key not in st.session_state:
        st.session_state[key] = st.query_params.get(key, _DEFAULTS[key])
    return st.session_state[key]


def _set(key: str, value) -> None:
    st.session_state[key] = value
    if value is None:
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = str(value)


def current_dataset() -> str:
    """Built-in dataset name or the folder of an uploaded/extracted dataset."""
    return _get("dataset")


def set_dataset(spec: str) -> None:
    _set("dataset", spec)


def current_backbone() -> str:
    return _get("backbone")


def set_backbone(name: str) -> None:
    _set("backbone", name)


def current_run() -> Run | None:
    run_id = _get("run")
    # The id comes from the URL: never let it name a folder outside runs/.
    if not run_id or not all(c.isalnum() or c in "-_" for c in str(run_id)):
        return None
    run = Run(runs_dir() / str(run_id))
    return run if run.exists() else None


def set_run(run: Run | None) -> None:
    _set("run", run.id if run else None)
