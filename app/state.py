"""State shared by every page: the current dataset, backbone and run.

Each lives in ``st.session_state`` and is mirrored in ``st.query_params`` so a
refresh or a shared link reopens the same dataset and run.
"""
from __future__ import annotations

import streamlit as st

from engine.data.builtin import DEFAULT_DATASET
from engine.runs import Run
from engine.workspace import runs_dir

__all__ = ["current_dataset", "set_dataset", "current_backbone", "set_backbone", "current_run", "set_run",
           "pick_run", "DEFAULT_BACKBONE"]

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
    """Built-in dataset name or the folder of an uploaded/extracted dataset.

    The value can come from the URL (?dataset=...), so it is checked with
    engine.data.ingest.validate_spec: only built-ins, uploads in the workspace
    and folders under the operator's TS_DATA_ROOTS; anything else falls back
    to the default dataset with a warning.
    """
    from engine.data.ingest import validate_spec
    from engine.errors import UserError

    spec = _get("dataset")
    try:
        valid = validate_spec(spec)
    except UserError as exc:
        st.warning(f"{exc}. Showing {DEFAULT_DATASET} instead.")
        _set("dataset", DEFAULT_DATASET)
        return DEFAULT_DATASET
    if valid != spec:
        _set("dataset", valid)
    return valid


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


def pick_run(label: str, runs: list[Run], key: str, on_pick=None) -> Run:
    """A selectbox of ``runs`` that opens on the current run and makes the picked one current."""
    from engine.runs.view import run_label

    by_id = {run.id: run for run in runs}
    current = current_run()
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = current.id if current is not None and current.id in by_id else runs[0].id

    def _picked() -> None:
        set_run(by_id[st.session_state[key]])
        if on_pick is not None:
            on_pick()

    st.selectbox(label, list(by_id), key=key, on_change=_picked, format_func=lambda rid: run_label(by_id[rid]))
    return by_id[st.session_state[key]]
