"""The Dataset page's label review: suspected label errors in a grid, kept, relabelled or dropped by click
or key (K keep, L relabel to the suggested label, D drop, U undo, for the first image of the grid).

The search runs as a background task (``python -m engine label-issues … --out``; features are computed
once and cached); the corrections go to the dataset's overlay in the workspace, never to its files.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from engine.data.dataset import Dataset
from engine.data.images import ImageProblem, load_rgb
from engine.dataloop.overlay import corrections, dataset_version, drop, relabel, undo
from engine.errors import UserError
from engine.workflow.dataloop import label_issues_state, start_label_issues

__all__ = ["label_review"]

GRID = 8
COLUMNS = 4


def _start(spec: str, dataset: Dataset) -> None:
    try:
        start_label_issues(spec, dataset)
    except UserError as exc:
        st.error(str(exc))


def _act(action: Callable[[], object], refresh: Callable[[], None]) -> None:
    try:
        action()
    except UserError as exc:
        st.session_state["label_review_error"] = str(exc)
    refresh()


def _card(dataset: Dataset, issue: dict, first: bool, refresh: Callable[[], None]) -> None:
    path = issue["path"]
    try:
        st.image(load_rgb(Path(dataset.root) / path), width=96)
    except (ImageProblem, OSError):
        st.caption("(image unreadable)")
    st.caption(f"`{Path(path).name}` given **{issue['label']}**, suggested **{issue['suggested']}** "
               f"(score {issue['score']:.2f})")
    kept = st.session_state.setdefault("label_review_kept", set())
    keys = {"keep": "k", "relabel": "l", "drop": "d"} if first else {}
    st.button("Keep", key=f"lr-keep-{path}", shortcut=keys.get("keep"),
              on_click=lambda: kept.add(path))
    if issue["suggested"] != issue["label"]:
        st.button(f"Relabel {issue['suggested']}", key=f"lr-relabel-{path}", shortcut=keys.get("relabel"),
                  on_click=_act, args=(lambda: relabel(dataset, path, issue["suggested"]), refresh))
    st.button("Drop", key=f"lr-drop-{path}", shortcut=keys.get("drop"),
              on_click=_act, args=(lambda: drop(dataset, path), refresh))


def label_review(spec: str, dataset: Dataset, refresh: Callable[[], None]) -> None:
    """Draw the review section. ``refresh`` forgets the page's cached dataset after a correction."""
    version = dataset_version(dataset)
    done = {c["path"] for c in corrections(dataset)}
    st.caption(f"Dataset version: **{version.label}** (fingerprint `{version.fingerprint}`). Corrections are "
               "kept in your workspace; the dataset's files are never changed.")
    if "label_review_error" in st.session_state:
        st.error(st.session_state.pop("label_review_error"))
    if version.corrections:
        st.button("Undo last correction", key="lr-undo", shortcut="u",
                  on_click=_act, args=(lambda: undo(dataset), refresh))
    task, result = label_issues_state(dataset)
    running = bool(task and task["state"] == "running")
    if running:
        @st.fragment(run_every="1s")
        def _wait() -> None:
            now = label_issues_state(dataset)[0]
            if not now or now["state"] != "running":
                st.rerun()
            st.info("Looking for label issues in the background…", icon=":material/hourglass_top:")

        _wait()
        return
    if task and task["state"] == "failed":
        st.error(f"The label check failed: {task.get('error', 'see its log')}")
    label = "Find label issues" if result is None else "Check again"
    if st.button(label, key="lr-go", help="cross-validated probe on cached features + confident learning"):
        _start(spec, dataset)
        st.rerun()
    if result is None:
        return
    issues = result["issues"]
    kept = st.session_state.get("label_review_kept", set())
    if result["fingerprint"] != version.fingerprint:
        st.caption("Found on an earlier version of the dataset; check again to look at this one.")
    todo = [i for i in issues if i["path"] not in done and i["path"] not in kept]
    st.write(f"**{len(issues)}** suspected label issue(s) among {result['checked']:,} images; "
             f"{len(issues) - len(todo)} reviewed, {len(todo)} to go.")
    for start in range(0, min(GRID, len(todo)), COLUMNS):
        for n, (col, issue) in enumerate(zip(st.columns(COLUMNS), todo[start : start + COLUMNS])):
            with col:
                _card(dataset, issue, first=start == 0 and n == 0, refresh=refresh)
